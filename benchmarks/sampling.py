"""What choosing a token costs, per sampler setting, next to what the decode step costs.

Loads a model, prefills a prompt, and times Sampler.sample on the logits of its last position
for each setting (greedy, temperature, top-k, top-p and both), median of --repeats calls, then
one decode step of the model (Session.step, median of as many), so that each setting's share of
a generated token shows. On Gemma 3 (a 262,144-token vocabulary) the filters are where sampling
costs: they must find a handful of candidates among all the ids for every token.

    .venv/bin/python benchmarks/sampling.py                  # the default model (Gemma 3 270M)
    .venv/bin/python benchmarks/sampling.py --model PATH     # a GGUF file or a checkpoint
    [--repeats 200] [--prompt TEXT] [--threads N]
"""

import argparse
import statistics
import sys
import time

from side_by_side import cpu_model, parse_model_args, positive_int

SETTINGS = (
    ("greedy", {"temperature": 0.0}),
    ("temperature 0.8", {"temperature": 0.8}),
    ("top_k 40", {"temperature": 0.8, "top_k": 40}),
    ("top_p 0.95", {"temperature": 0.8, "top_p": 0.95}),
    ("top_k 40, top_p 0.95", {"temperature": 0.8, "top_k": 40, "top_p": 0.95}),
    ("top_p 0.999", {"temperature": 1.0, "top_p": 0.999}),
)


def median_ms(fn, repeats: int) -> float:
    fn()   # first-call costs out of the figure
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a GGUF file or checkpoint directory (default: Gemma 3 270M)")
    p.add_argument("--repeats", type=positive_int, default=200, help="timed calls per setting (default 200)")
    p.add_argument("--prompt", default="The history of the Roman empire began when",
                   help="the text whose next token is sampled")
    args = parse_model_args(p)

    import numpy as np

    import smallmind
    from smallmind import kernels
    from smallmind.errors import SmallMindError
    from smallmind.runtime.sampler import Sampler
    from smallmind.runtime.session import Session

    try:
        model = smallmind.load(args.model)
        ids = np.asarray(model.tokenizer.encode(args.prompt), np.int32)
        if ids.shape[0] == 0:
            sys.exit("sampling: the prompt is empty after tokenization: give some text")
        ctx = ids.shape[0] + args.repeats + 1   # the prompt, then the timed decode steps and a first one
        if ctx > model.context_length:
            sys.exit(f"sampling: the prompt ({ids.shape[0]} tokens) and --repeats {args.repeats} decode steps "
                     f"exceed the model's context of {model.context_length}: lower --repeats")
        session = Session(model.net, ctx)
        logits = session.prefill(ids).copy()
    except SmallMindError as e:
        sys.exit(f"sampling: {e}")
    vocab = logits.shape[0]
    token = int(logits.argmax())
    step_ms = median_ms(lambda: session.step(token), args.repeats)

    print(f"CPU: {cpu_model()}; kernels {kernels.path}; model {model.name} ({args.model or 'the default model'}), "
          f"vocabulary {vocab:,}; medians of {args.repeats} calls")
    print(f"{'setting':<22} {'ms per token':>13} {'of a decode step':>17}")
    for name, settings in SETTINGS:
        sampler = Sampler(vocab, seed=0, **settings)
        ms = median_ms(lambda sampler=sampler: sampler.sample(logits), args.repeats)
        print(f"{name:<22} {ms:>13.3f} {ms / step_ms:>16.0%}")
    print(f"{'(the decode step)':<22} {step_ms:>13.3f}")


if __name__ == "__main__":
    main()
