"""The serving engine's batching without the server: aggregate tokens/s of 1 and of 8 streams.

serve_load.py measures what a client sees through HTTP; this measures the engine alone (the
runtime Engine that `smallmind serve` runs), fed by threads that submit requests and wait for
their end, so the 8-vs-1 ratio of the batched decode step itself is separated from what the
HTTP layer, the event loop and the clients cost. One process, the two phases alternating for
--rounds rounds. A phase lasts --seconds: each of its streams asks for one completion of at most
--tokens tokens after another (temperature 1, a seed of its own), and the tokens the engine
delivers within those seconds count; what is still running at the end is cancelled. So every
stream is busy for the whole phase (a phase of a fixed number of requests would end with fewer
streams running, as requests that stop at the model's end of text finish early).

    .venv/bin/python benchmarks/engine_batch.py                      # --preset seed: random weights
    .venv/bin/python benchmarks/engine_batch.py --model PATH         # a GGUF file or a checkpoint
    [--tokens 100] [--seconds 10] [--streams 8] [--rounds 3] [--threads N]
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import PROMPTS, run_threads, seed_checkpoint  # noqa: E402
from side_by_side import cpu_model, parse_model_args, positive_float, positive_int  # noqa: E402


def phase(engine, tokenizer, streams: int, seconds: float, tokens: int) -> int:
    """`streams` threads, each running completions one after another for `seconds` -> the tokens
    delivered within those seconds."""
    from smallmind.runtime.engine import Delta, Failed, GenerationRequest

    failures, counts = [], [[0, 0] for _ in range(streams)]   # per stream: tokens in time, requests asked
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        while time.perf_counter() < deadline:
            done = threading.Event()

            def deliver(event, done=done):
                if isinstance(event, Delta) and time.perf_counter() <= deadline:
                    counts[i][0] += event.tokens
                if isinstance(event, Failed):
                    failures.append(event.message)
                    done.set()
                elif not isinstance(event, Delta):
                    done.set()

            ids = [int(t) for t in tokenizer.encode(PROMPTS[(i + counts[i][1]) % len(PROMPTS)])]
            handle = engine.submit(GenerationRequest(ids, max_tokens=tokens, deliver=deliver,
                                                     seed=1000 * i + counts[i][1]))
            counts[i][1] += 1
            if not done.wait(max(0.0, deadline - time.perf_counter())):
                handle.cancel()   # past the deadline: its slot is free at the engine's next step
                return

    run_threads(client, streams)
    if failures:
        sys.exit(f"engine_batch: a request failed: {failures[0]}")
    while engine.active_sequences or engine.queue_depth:   # the cancelled ones leave at the next step
        time.sleep(0.001)
    return sum(c[0] for c in counts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a GGUF file or checkpoint directory (default: --preset seed)")
    p.add_argument("--tokens", type=positive_int, default=100, help="max_tokens of every request (default 100)")
    p.add_argument("--seconds", type=positive_float, default=10.0,
                   help="length of each phase: every stream asks for one completion after another (default 10)")
    p.add_argument("--streams", type=positive_int, default=8, help="concurrent streams of the batched phase")
    p.add_argument("--rounds", type=positive_int, default=3, help="alternating 1- and N-stream rounds")
    args = parse_model_args(p)

    import smallmind
    from smallmind.errors import SmallMindError
    from smallmind.runtime.engine import Engine

    with tempfile.TemporaryDirectory() as tmp:
        try:
            model = smallmind.load(args.model or str(seed_checkpoint(Path(tmp))))
            if args.streams > model.context_length:
                sys.exit(f"engine_batch: --streams must be 1..{model.context_length} (the model's context), "
                         f"got {args.streams}")
            engine = Engine(model, parallel=args.streams, ctx=min(1024, model.context_length))
        except SmallMindError as e:
            sys.exit(f"engine_batch: {e}")
        try:   # every prompt with --tokens fits the slots, before any thread asks
            for prompt in PROMPTS:
                engine.check([int(t) for t in model.tokenizer.encode(prompt)], args.tokens)
        except SmallMindError as e:
            engine.close()
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
        n1 = phase(engine, model.tokenizer, 1, args.seconds, args.tokens)
        n8 = phase(engine, model.tokenizer, args.streams, args.seconds, args.tokens)
        ratios.append(n8 / n1 if n1 else float("nan"))   # nan: nothing generated in time
        print(f"{r:>5} {n1 / args.seconds:>15.1f} {n8 / args.seconds:>17.1f} {ratios[-1]:>6.2f}x", flush=True)
    print(f"{args.streams} streams / 1 stream aggregate tok/s: median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
