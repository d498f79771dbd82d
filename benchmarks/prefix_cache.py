"""Chat turns with more conversations than KV slots: time to first token and prompt tokens
reused, with the server's prefix cache (`--cache-mb`, default 256) and without it (`--cache-mb 0`).

`smallmind serve --parallel P` runs once with each setting, each its own process, one after the
other, in alternating rounds (--rounds). In each run, C conversations (--conversations, default
3 x P) take turns in round-robin order, one request at a time: a turn sends the conversation so
far (a document of the standard library's source, then each earlier turn's question and
answer) plus a new question, and streams --tokens tokens, greedy. Between two turns of one
conversation, the others have taken every slot, so without the cache each turn recomputes its
whole history; with it, the history's keys and values come back from the cache.

Prints, per setting, the median time to first token of the turns after each conversation's
first, and the share of their prompt tokens whose KV was reused (usage.prompt_tokens_details).

    .venv/bin/python benchmarks/prefix_cache.py [--model PATH] [--parallel 2] [--conversations 6]
        [--turns 3] [--history 400] [--tokens 16] [--rounds 2] [--threads N]
"""

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from serve_load import launch
from side_by_side import cpu_model, positive_int

REQUEST_TIMEOUT = 300.0   # seconds: a bound per request, so the script always ends
QUESTIONS = ["\nQuestion: what does this code do?\nAnswer:", "\nQuestion: which names does it define?\nAnswer:",
             "\nQuestion: what would you test first?\nAnswer:", "\nQuestion: where could it fail?\nAnswer:"]


def documents(n: int, words: int) -> list[str]:
    # n different pieces of the standard library's source, about `words` words each
    import inspect
    import json as json_module
    import textwrap

    text = inspect.getsource(json_module.decoder) + inspect.getsource(textwrap)
    tokens = text.split()
    step = max(1, (len(tokens) - words) // max(1, n))
    return [" ".join(tokens[i * step:i * step + words]) for i in range(n)]


def start(model: str | None, args, cache_mb: int, log_path: Path):
    options = ["--parallel", str(args.parallel), "--cache-mb", str(cache_mb)]
    if model:
        options += ["--model", model]
    if args.threads:
        options += ["--threads", str(args.threads)]
    return launch(options, log_path)


def turn(port: int, model_id: str, prompt: str, tokens: int) -> dict:
    """One streamed greedy completion -> ttft, text, prompt and cached tokens."""
    body = json.dumps({"model": model_id, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"prefix_cache: HTTP {response.status}: {response.read()[:200]!r}")
    ttft, text, usage = None, [], None
    while True:
        line = response.readline()
        if not line or line.strip() == b"data: [DONE]":
            break
        if not line.startswith(b"data: "):
            continue
        chunk = json.loads(line[6:])
        for choice in chunk.get("choices", ()):
            if choice["text"]:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text.append(choice["text"])
        usage = chunk.get("usage") or usage
    conn.close()
    if usage is None:
        raise SystemExit("prefix_cache: a response ended without its usage")
    return {"ttft": ttft if ttft is not None else time.perf_counter() - t0, "text": "".join(text),
            "prompt": usage["prompt_tokens"], "cached": usage["prompt_tokens_details"]["cached_tokens"]}


def run(port: int, model_id: str, args) -> list[dict]:
    # every conversation's turns, round-robin; the results of the turns after the first
    history = documents(args.conversations, args.history)
    out = []
    for t in range(args.turns):
        for c in range(args.conversations):
            prompt = history[c] + QUESTIONS[t % len(QUESTIONS)]
            result = turn(port, model_id, prompt, args.tokens)
            history[c] = prompt + result["text"]
            if t > 0:
                out.append(result)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a GGUF file or checkpoint directory (default: the default model)")
    p.add_argument("--parallel", type=positive_int, default=2, help="the server's --parallel (default 2)")
    p.add_argument("--conversations", type=positive_int, default=None, help="conversations (default 3 x --parallel)")
    p.add_argument("--turns", type=positive_int, default=3, help="turns of each conversation (default 3)")
    p.add_argument("--history", type=positive_int, default=400, help="words of each conversation's document")
    p.add_argument("--tokens", type=positive_int, default=16, help="max_tokens of every turn (default 16)")
    p.add_argument("--rounds", type=positive_int, default=2, help="alternating rounds of both settings (default 2)")
    p.add_argument("--threads", type=positive_int, default=None, help="the server's --threads")
    args = p.parse_args()
    if args.turns < 2:
        raise SystemExit("prefix_cache: --turns must be at least 2 (the first turn of a conversation has no history)")
    args.conversations = args.conversations or 3 * args.parallel
    results = {"off (--cache-mb 0)": [], "on (--cache-mb 256)": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, cache_mb in (("off (--cache-mb 0)", 0), ("on (--cache-mb 256)", 256)):
                proc, port, model_id, log = start(args.model, args, cache_mb, Path(tmp) / "server.log")
                try:
                    results[name] += run(port, model_id, args)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                    log.close()
    print(f"CPU {cpu_model()}; model {args.model or 'the default'}; --parallel {args.parallel}, "
          f"{args.conversations} conversations x {args.turns} turns, documents of {args.history} words, "
          f"{args.tokens} tokens a turn, {args.rounds} rounds")
    print(f"{'prefix cache':<22} {'turns':>6} {'TTFT p50':>10} {'TTFT max':>10} {'prompt tokens reused':>21}")
    medians = {}
    for name, rows in results.items():
        reused = sum(r["cached"] for r in rows) / max(1, sum(r["prompt"] for r in rows))
        medians[name] = statistics.median(r["ttft"] for r in rows)
        print(f"{name:<22} {len(rows):>6} {medians[name] * 1e3:>8.0f}ms {max(r['ttft'] for r in rows) * 1e3:>8.0f}ms "
              f"{100 * reused:>20.0f}%")
    off, on = medians.values()
    print(f"time to first token of a later turn: {off / on:.1f}x shorter with the prefix cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
