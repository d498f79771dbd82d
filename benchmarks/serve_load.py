"""Load on `smallmind serve`: many concurrent streaming clients over loopback.

Starts the server as a subprocess on 127.0.0.1 (a free port), then measures:
  1. one stream, then 8 concurrent streams, alternating for --rounds rounds, each phase lasting
     --seconds with every stream asking for one completion after another: aggregate generated
     tokens/s of each (the tokens that arrived within the phase's seconds; a chunk is credited
     an equal share of its response's usage count), and their ratio (target >= 3x: the engine
     decodes the 8 in one batched forward per step). A timed phase keeps all 8 streams busy to
     its end, where a fixed number of requests each would end with fewer running (requests
     that stop at the model's end of text finish early);
  2. 32 concurrent streaming clients, one request each: none lost, every response complete
     (a finish_reason, `[DONE]`, and usage.completion_tokens equal to the tokens asked for
     unless the model ended its text), time to first token under that load.
Prints a table, stops the server and exits; every request has a timeout.

    .venv/bin/python benchmarks/serve_load.py                   # --preset seed: random weights
    .venv/bin/python benchmarks/serve_load.py --model PATH      # a GGUF file or a checkpoint
    [--tokens 48] [--seconds 10] [--parallel 8] [--clients 32] [--threads N] [--ctx N]

The `seed` preset gets random weights and a byte-level BPE tokenizer trained here on this
file's text (so the server has something to tokenize with); its generations are gibberish of
exactly --tokens tokens, which is what a load test wants.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from side_by_side import cpu_model, positive_float, positive_int

REQUEST_TIMEOUT = 300.0   # seconds: a bound per request, so the script always ends
START_TIMEOUT = 120.0
PROMPTS = ["The quick brown fox", "Once upon a time", "In a hole in the ground", "It was a bright cold day",
           "Call me", "All happy families", "The sky above the port", "Many years later"]


def seed_checkpoint(directory: Path) -> Path:
    from smallmind.formats.checkpoint import save_checkpoint
    from smallmind.formats.tokenizer import train_tokenizer
    from smallmind.models.gpt import init_params, preset

    tokenizer = train_tokenizer("bpe", Path(__file__).read_text(encoding="utf-8"), 512)
    cfg = preset("seed", vocab_size=tokenizer.vocab_size)
    path = directory / "seed"
    save_checkpoint(path, config=cfg, params=init_params(cfg, seed=0), tokenizer=tokenizer)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, args, log_path: Path):
    command = ["--model", str(model), "--parallel", str(args.parallel), "--queue-size", str(max(64, 2 * args.clients))]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.ctx:
        command += ["--ctx", str(args.ctx)]
    return launch(command, log_path)


def launch(options: list[str], log_path: Path):
    """`smallmind serve` with `options` on a free loopback port, up -> (process, port, model id, log)."""
    port = free_port()
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "smallmind", "serve", "--port", str(port), *options]
    log = open(log_path, "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            health = json.loads(conn.getresponse().read())
            return proc, port, health["model"], log
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    log.close()
    said = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    raise SystemExit(f"{Path(sys.argv[0]).stem}: the server did not start: {said[-1] if said else 'it said nothing'}")


def stream(port: int, model_id: str, prompt: str, tokens: int, seed: int) -> dict:
    """One streamed completion -> what it took: ttft, seconds, tokens, complete."""
    body = json.dumps({"model": model_id, "prompt": prompt, "max_tokens": tokens, "stream": True,
                       "seed": seed, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    ttft, finish, usage, done, arrivals = None, None, None, False, []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            return {"ok": False, "error": f"HTTP {response.status}: {response.read()[:200]!r}"}
        while True:
            line = response.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return {"ok": False, "error": chunk["error"]["message"]}
            for choice in chunk.get("choices", ()):
                if choice["text"]:
                    arrivals.append(time.perf_counter())
                    if ttft is None:
                        ttft = arrivals[-1] - t0
                finish = choice["finish_reason"] or finish
            usage = chunk.get("usage") or usage
        conn.close()
    except OSError as e:
        return {"ok": False, "error": str(e)}
    seconds = time.perf_counter() - t0
    generated = usage["completion_tokens"] if usage else 0
    complete = done and finish is not None and usage is not None and (generated == tokens or finish == "stop")
    # (time, tokens) as the text arrived: a chunk carries the tokens whose text it is, which the
    # client cannot see one by one, so each chunk is credited an equal share of the usage count
    share = generated / len(arrivals) if arrivals and complete else 0.0
    return {"ok": complete, "ttft": ttft if ttft is not None else seconds, "seconds": seconds,
            "tokens": generated, "error": None if complete else "incomplete response",
            "arrivals": [(t, share) for t in arrivals]}


def run_clients(port, model_id, clients: int, requests_each: int, tokens: int) -> tuple[list[dict], float]:
    """`clients` threads, each streaming `requests_each` completions one after another."""
    results, lock = [], threading.Lock()

    def client(i):
        for r in range(requests_each):
            out = stream(port, model_id, PROMPTS[(i + r) % len(PROMPTS)], tokens, seed=i * 1000 + r)
            with lock:
                results.append(out)

    return results, run_threads(client, clients)


def run_for(port, model_id, clients: int, seconds: float, tokens: int) -> tuple[list[dict], float]:
    """`clients` threads, each streaming one completion after another for `seconds` ->
    (results, tokens that arrived within those seconds). What is running at the end runs to
    its end (so that it too is checked complete) but its later tokens do not count."""
    results, lock = [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(i):
        r = 0
        while time.perf_counter() < deadline:
            out = stream(port, model_id, PROMPTS[(i + r) % len(PROMPTS)], tokens, seed=i * 1000 + r)
            r += 1
            with lock:
                results.append(out)

    run_threads(client, clients)
    return results, sum(n for out in results for t, n in out.get("arrivals", ()) if t <= deadline)


def run_threads(target, n: int) -> float:
    """target(0) .. target(n-1), each on a thread of its own, all at once -> seconds until the last ends."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def summary(name, results, wall, clients, tokens=None) -> dict:
    # tokens: those that count (a timed phase's, within its seconds = wall), else every response's
    good = [r for r in results if r["ok"]]
    ttfts = sorted(r["ttft"] for r in good) or [float("nan")]
    if tokens is None:
        tokens = sum(r["tokens"] for r in good)
    return {"phase": name, "clients": clients, "requests": len(results), "complete": len(good),
            "tokens": round(tokens), "tok_s": tokens / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_max": ttfts[-1], "wall": wall,
            "errors": sorted({r["error"] for r in results if not r["ok"]})}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a GGUF file or checkpoint directory (default: --preset seed)")
    p.add_argument("--preset", default="seed", choices=["seed"], help="random weights when no --model")
    p.add_argument("--tokens", type=positive_int, default=48, help="max_tokens of every request (default 48)")
    p.add_argument("--seconds", type=positive_float, default=10.0,
                   help="length of each 1- and 8-stream phase, its streams asking for one completion after "
                        "another (default 10)")
    p.add_argument("--parallel", type=positive_int, default=8, help="the server's --parallel (default 8)")
    p.add_argument("--clients", type=positive_int, default=32, help="concurrent clients in the load phase (default 32)")
    p.add_argument("--threads", type=positive_int, default=None, help="the server's --threads")
    p.add_argument("--ctx", type=positive_int, default=None, help="the server's --ctx")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternating 1- and 8-stream rounds (default 3)")
    args = p.parse_args()
    if args.model is not None and not Path(args.model).exists():
        p.error(f"no model at {args.model}")

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else seed_checkpoint(Path(tmp))
        proc, port, model_id, log = start_server(model, args, Path(tmp) / "server.log")
        try:
            stream(port, model_id, PROMPTS[0], 4, 0)   # warm-up: first-call costs out of the figures
            rows, ratios = [], []
            # 1 and 8 streams alternate, so that both see the same share of a busy machine
            for round_ in range(args.rounds):
                for streams in (1, 8):
                    results, tokens = run_for(port, model_id, streams, args.seconds, args.tokens)
                    name = f"{streams} stream{'s' if streams > 1 else ''} #{round_ + 1}"
                    rows.append(summary(name, results, args.seconds, streams, tokens))
                if rows[-2]["tok_s"] == 0:
                    errors = rows[-2]["errors"] or ["no tokens generated"]
                    raise SystemExit(f"serve_load: a single stream generated nothing: {errors[0]}")
                ratios.append(rows[-1]["tok_s"] / rows[-2]["tok_s"])
            results, wall = run_clients(port, model_id, args.clients, 1, args.tokens)
            rows.append(summary(f"{args.clients} clients", results, wall, args.clients))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    print(f"model: {model_id} ({args.model or 'preset seed, random weights'}); server --parallel {args.parallel}; "
          f"max_tokens {args.tokens}; CPU: {cpu_model()}, {os.cpu_count()} CPUs")
    print(f"{'phase':<14} {'requests':>8} {'complete':>8} {'tokens':>7} {'tok/s':>8} {'TTFT p50':>9} "
          f"{'TTFT max':>9} {'wall s':>7}")
    for r in rows:
        print(f"{r['phase']:<14} {r['requests']:>8} {r['complete']:>8} {r['tokens']:>7} {r['tok_s']:>8.1f} "
              f"{r['ttft_p50'] * 1e3:>7.0f}ms {r['ttft_max'] * 1e3:>7.0f}ms {r['wall']:>7.2f}")
        for e in r["errors"]:
            print(f"    error: {e}")
    lost = sum(r["requests"] - r["complete"] for r in rows)
    print(f"8 streams / 1 stream aggregate tok/s, per round: {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}x (target >= 3x)")
    print(f"requests lost or incomplete: {lost}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
