"""The serving engine's batching without the server: aggregate tokens/s of 1 and of 8 streams.

serve_load.py measures what a client sees through HTTP; this measures the engine alone (the
runtime Engine that `smallmind serve` runs), fed by threads that submit requests and wait for
their end, so the 8-vs-1 ratio of the batched decode step itself is separated from what the
HTTP layer, the event loop and the clients cost. One process, the two phases alternating for
--rounds rounds, each stream asking for --requests completions of at most --tokens tokens in
turn (the same in both phases) at temperature 1 with its own seed; tokens/s counts what the
engine reports as generated.

    .venv/bin/python benchmarks/engine_batch.py                      # --preset seed: random weights
    .venv/bin/python benchmarks/engine_batch.py --model PATH         # a GGUF file or a checkpoint
    [--tokens 100] [--requests 4] [--streams 8] [--rounds 3] [--threads N]
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import PROMPTS, run_threads, seed_checkpoint  # noqa: E402
from side_by_side import cpu_model, positive_int  # noqa: E402


def phase(engine, tokenizer, streams: int, requests_each: int, tokens: int) -> tuple[int, float]:
    """`streams` threads, each running `requests_each` completions in turn -> (tokens, seconds)."""
    from smallmind.runtime.engine import Failed, Finished, GenerationRequest

    generated, failures, lock = [0], [], threading.Lock()

    def client(i: int) -> None:
        for r in range(requests_each):
            done = threading.Event()

            def deliver(event, done=done):
                if isinstance(event, Finished):
                    with lock:
                        generated[0] += event.completion_tokens
                if isinstance(event, Failed):
                    failures.append(event.message)
                if isinstance(event, (Finished, Failed)):
                    done.set()

            ids = [int(t) for t in tokenizer.encode(PROMPTS[i % len(PROMPTS)])]
            engine.submit(GenerationRequest(ids, max_tokens=tokens, deliver=deliver, seed=1000 * i + r))
            done.wait()

    seconds = run_threads(client, streams)
    if failures:
        sys.exit(f"engine_batch: a request failed: {failures[0]}")
    return generated[0], seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a GGUF file or checkpoint directory (default: --preset seed)")
    p.add_argument("--tokens", type=positive_int, default=100, help="max_tokens of every request (default 100)")
    p.add_argument("--requests", type=positive_int, default=4, help="completions each stream asks for in turn")
    p.add_argument("--streams", type=positive_int, default=8, help="concurrent streams of the batched phase")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternating 1- and N-stream rounds")
    p.add_argument("--threads", type=positive_int, default=None, help="the kernels' thread budget")
    args = p.parse_args()
    if args.model is not None and not os.path.exists(args.model):
        p.error(f"no model at {args.model}")

    import smallmind
    from smallmind import kernels
    from smallmind.errors import SmallMindError
    from smallmind.runtime.engine import Engine

    if args.threads is not None:
        kernels.set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model = smallmind.load(args.model or str(seed_checkpoint(Path(tmp))))
            if args.streams > model.context_length:
                sys.exit(f"engine_batch: --streams must be 1..{model.context_length} (the model's context), "
                         f"got {args.streams}")
            engine = Engine(model, parallel=args.streams, ctx=min(1024, model.context_length))
        except SmallMindError as e:
            sys.exit(f"engine_batch: {e}")
        try:
            run(engine, model, args)
        finally:
            engine.close()


def run(engine, model, args) -> None:
    from smallmind import kernels

    print(f"CPU: {cpu_model()}; kernels {kernels.path}; model {model.name} "
          f"({args.model or 'preset seed, random weights'}); {args.streams} slots, max_tokens {args.tokens}")
    print(f"{'round':>5} {'1 stream tok/s':>15} {f'{args.streams} streams tok/s':>17} {'ratio':>7}")
    ratios = []
    for r in range(1, args.rounds + 1):
        n1, s1 = phase(engine, model.tokenizer, 1, args.requests, args.tokens)
        n8, s8 = phase(engine, model.tokenizer, args.streams, args.requests, args.tokens)
        ratios.append((n8 / s8) / (n1 / s1) if n1 else float("nan"))  # nan: every request ended at once
        print(f"{r:>5} {n1 / s1:>15.1f} {n8 / s8:>17.1f} {ratios[-1]:>6.2f}x", flush=True)
    print(f"{args.streams} streams / 1 stream aggregate tok/s: median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
