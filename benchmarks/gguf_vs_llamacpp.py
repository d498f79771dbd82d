"""SmallMind against llama.cpp (llama-cpp-python) on the same GGUF file, side by side.

    .venv/bin/python benchmarks/gguf_vs_llamacpp.py --threads 2 --repeats 5
    .venv/bin/python benchmarks/gguf_vs_llamacpp.py --model path/to/file.gguf --threads 1

Each side runs in its own long-lived worker process (two libraries' thread pools in one process
slow each other) with the model loaded once; the parent asks each worker in turn for one
measurement, so repetitions are interleaved, and reports medians. A worker answers only once its
threads have gone quiet (side_by_side.settle: llama.cpp's threads, like PyTorch's, spin for about
10 ms after their work), so each turn starts on idle cores. Measured, per model:
  decode@128   decode tokens/s of 64 greedy tokens after a 128-token prompt
  decode@2000  decode tokens/s of 32 greedy tokens after a 2,000-token prompt
  prefill128, prefill512   prefill tokens/s of a 128 / 512-token prompt into an empty cache
  rss          the worker's peak resident memory (MB) after all runs
Both sides get the same token ids (the prompt text tokenized by llama.cpp) and sample greedily
from the last position's logits. The CPU model is printed with the table.

Needs llama-cpp-python (a test reference, not a SmallMind dependency): see the README for the
build flags. Without --model it runs the two reference files (Gemma 3 270M Q4_K_M, SmolLM2 135M
Q4_1) from their packages.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from side_by_side import cpu_model, settle

TASKS = ("decode@128", "decode@2000", "prefill128", "prefill512")
CTX = 2100


def prompt_text(n_words: int) -> str:
    # plain English-like text, made here (no third-party text): varied words, punctuation, digits
    words = ("the model reads each token of the prompt and then writes new ones one at a time while "
             "the cache keeps every key and value it has seen so far in memory for the next step of "
             "decoding on a small machine with two cores and a few gigabytes of fast memory").split()
    out = []
    for i in range(n_words):
        w = words[(i * 7 + i // 5) % len(words)]
        out.append(w + ("," if i % 11 == 10 else ".\n" if i % 23 == 22 else ""))
        if i % 37 == 36:
            out.append(str(1000 + i))
    return " ".join(out)


# ---------------------------------------------------------------------------------------- workers


class SmallMindSide:
    def __init__(self, path, threads):
        import smallmind
        from smallmind import kernels

        kernels.set_threads(threads)
        self.model = smallmind.load(path)
        self.session = self.model.session(CTX)

    def prefill(self, ids):
        import numpy as np

        self.session.reset()
        t0 = time.perf_counter()
        logits = self.session.prefill(np.asarray(ids, np.int32))
        return time.perf_counter() - t0, int(logits.argmax())

    def decode(self, ids, n):
        import numpy as np

        self.session.reset()
        logits = self.session.prefill(np.asarray(ids, np.int32))
        tokens = []
        t0 = time.perf_counter()
        for _ in range(n):
            token = int(logits.argmax())
            tokens.append(token)
            logits = self.session.step(token)
        return time.perf_counter() - t0, tokens


class LlamaCppSide:
    def __init__(self, path, threads):
        import llama_cpp
        import numpy as np

        self.llama_cpp, self.np = llama_cpp, np
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=CTX + 16, n_batch=512, n_ubatch=512,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _logits(self):
        ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def prefill(self, ids):
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - t0, int(self._logits().argmax())

    def decode(self, ids, n):
        self.llm.reset()
        self.llm.eval(ids)
        tokens = []
        t0 = time.perf_counter()
        for _ in range(n):
            token = int(self._logits().argmax())
            tokens.append(token)
            self.llm.eval([token])
        return time.perf_counter() - t0, tokens


def worker(side: str, path: str, threads: int) -> None:
    """Answer one JSON request per stdin line with one JSON line: {"task", "ids"} -> {"seconds", ...}."""
    impl = (SmallMindSide if side == "smallmind" else LlamaCppSide)(path, threads)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        task, ids = req["task"], req["ids"]
        if task.startswith("prefill"):
            seconds, first = impl.prefill(ids)
            result = {"seconds": seconds, "tok_s": len(ids) / seconds, "first": first}
        else:
            n = req["new"]
            seconds, tokens = impl.decode(ids, n)
            result = {"seconds": seconds, "tok_s": n / seconds, "tokens": tokens}
        result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["settle_ms"] = settle() * 1e3
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------- parent


class Worker:
    def __init__(self, side, path, threads):
        self.side = side
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", side, "--model", str(path),
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        ready = self.proc.stdout.readline()
        if not ready:
            raise SystemExit(f"the {side} worker did not start (see its error above)")

    def ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.side} worker died")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def default_models() -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from smallmind.runtime.model import default_chat_model_path, default_model_path

    return [default_model_path(), default_chat_model_path()]


def requests(path: Path) -> dict:
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ids = vocab.tokenize(prompt_text(3000).encode(), add_bos=True)
    if len(ids) < 2000:
        raise SystemExit("the generated prompt is too short")
    return {"decode@128": {"ids": ids[:128], "new": 64}, "decode@2000": {"ids": ids[:2000], "new": 32},
            "prefill128": {"ids": ids[:128]}, "prefill512": {"ids": ids[:512]}}


def bench_model(path: Path, threads: int, repeats: int) -> dict:
    reqs = requests(path)
    workers = [Worker("smallmind", path, threads), Worker("llama.cpp", path, threads)]
    samples = {w.side: {t: [] for t in TASKS} for w in workers}
    agree = {}
    try:
        for w in workers:  # one warm-up of every task
            for task in TASKS:
                w.ask(task=task, **reqs[task])
        for _ in range(repeats):
            for task in TASKS:
                for w in workers:
                    r = w.ask(task=task, **reqs[task])
                    samples[w.side][task].append(r["tok_s"])
                    if "tokens" in r:
                        agree.setdefault(task, {})[w.side] = r["tokens"]
                    rss = r["rss_mb"]
                    samples[w.side]["rss"] = [rss]
    finally:
        for w in workers:
            w.close()
    rows = {}
    for task in TASKS + ("rss",):
        sm, lc = (statistics.median(samples[s][task]) for s in ("smallmind", "llama.cpp"))
        rows[task] = {"smallmind": sm, "llama.cpp": lc, "ratio": sm / lc if task != "rss" else lc / sm}
    return {"model": path.name, "rows": rows,
            "same_greedy_tokens": {task: leading_agreement(sides["smallmind"], sides["llama.cpp"])
                                   for task, sides in agree.items()}}


def leading_agreement(ours: list, theirs: list) -> str:
    """'n of m': how many greedy tokens the two sides share before the first difference (two
    runtimes' float sums differ in their last bits, so a near-tie can go either way)."""
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"{same} of {len(ours)}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="a GGUF file (repeatable; default: the two reference models)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--worker", choices=["smallmind", "llama.cpp"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.model[0], args.threads)
        return 0
    models = [Path(m) for m in args.model] if args.model else default_models()
    print(f"CPU: {cpu_model()}; {args.threads} thread(s) each side; {args.repeats} interleaved repetitions, medians")
    results = []
    for path in models:
        r = bench_model(path, args.threads, args.repeats)
        results.append(r)
        print(f"\n{r['model']}")
        print(f"| {'measure':<12} | {'SmallMind':>10} | {'llama.cpp':>10} | {'ratio':>6} |")
        print(f"|{'-' * 14}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
        for task, row in r["rows"].items():
            unit = "MB" if task == "rss" else "tok/s"
            print(f"| {task + ' ' + unit:<12} | {row['smallmind']:>10.1f} | {row['llama.cpp']:>10.1f} | "
                  f"{row['ratio']:>5.2f}x |")
        print("greedy tokens the same before the first difference: "
              + ", ".join(f"{t} {n}" for t, n in r["same_greedy_tokens"].items()))
        print("(ratio: SmallMind's speed over llama.cpp's; for rss, llama.cpp's memory over SmallMind's)")
    if args.json:
        print(json.dumps({"cpu": cpu_model(), "threads": args.threads, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
