"""Training's products one by one, SmallMind's GEMM vs PyTorch, each in its own process, interleaved.

For a preset's layer (batch 16 x min(128, context) rows) and its LM head, each product of a
training step is timed on its own: the forward (x @ W.T + b), the input gradient (dout @ W) and
the weight gradient (dout.T @ x, with the bias gradient on SmallMind's side). Each side is a
worker process of its own (side_by_side.py); the parent asks them in turn for one timed
repetition per product, so machine noise hits both alike, and prints the median GFLOPS of each
side and their ratio, with the CPU model.

    .venv/bin/python benchmarks/train_products.py --preset seed --threads 2 --repeats 7
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from side_by_side import Worker, cpu_model, load_average, positive_int, preset_names, serve  # noqa: E402

CALLS = 5   # calls per timed repetition


def shapes(preset_name: str) -> dict:
    """name -> (K, M): a product of K inputs and M outputs over the batch's rows."""
    from smallmind.models.gpt import preset

    cfg = preset(preset_name)
    C = cfg.d_model
    return {"qkv": (C, 3 * C), "attn_out": (C, C), "mlp_up": (C, 4 * C), "mlp_down": (4 * C, C),
            "lm_head": (C, cfg.vocab_size)}


def worker(side: str, preset_name: str, threads: int) -> None:
    import numpy as np

    from smallmind.bench.train import BATCH, SEQ
    from smallmind.models.gpt import preset

    rows = BATCH * min(SEQ, preset(preset_name).context_length)
    rng = np.random.default_rng(0)
    calls = {}
    if side == "smallmind":
        from smallmind import kernels

        kernels.set_threads(threads)
        about = {"kernels": kernels.path}
        for name, (K, M) in shapes(preset_name).items():
            x, w = rng.standard_normal((rows, K), np.float32), rng.standard_normal((M, K), np.float32)
            b, dout = np.zeros(M, np.float32), rng.standard_normal((rows, M), np.float32)
            out, dx = np.empty((rows, M), np.float32), np.empty((rows, K), np.float32)
            dw, db = np.zeros((M, K), np.float32), np.zeros(M, np.float32)
            calls[name, "forward"] = lambda x=x, w=w, b=b, out=out: kernels.linear(x, w, b, out)
            calls[name, "input grad"] = lambda dout=dout, w=w, dx=dx: kernels.linear_backward_input(dout, w, dx)
            calls[name, "weight grad"] = (lambda dout=dout, x=x, dw=dw, db=db:
                                          kernels.linear_backward_weight(dout, x, dw, db))
    else:
        import torch

        torch.set_num_threads(threads)
        about = {"torch": torch.__version__}
        for name, (K, M) in shapes(preset_name).items():
            x, w = torch.randn(rows, K), torch.randn(M, K)
            b, dout = torch.zeros(M), torch.randn(rows, M)
            calls[name, "forward"] = lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b)
            calls[name, "input grad"] = lambda dout=dout, w=w: dout @ w
            calls[name, "weight grad"] = lambda dout=dout, x=x: dout.t() @ x
    for call in calls.values():
        call()

    def timed(request):
        call = calls[tuple(request["product"])]
        start = time.perf_counter()
        for _ in range(CALLS):
            call()
        return {"seconds": (time.perf_counter() - start) / CALLS}

    serve(timed, {**about, "rows": rows})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed", choices=preset_names())
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.preset, args.threads)

    products = [(name, kind) for name in shapes(args.preset) for kind in ("forward", "input grad", "weight grad")]
    workers = [Worker(__file__, side, ["--preset", args.preset, "--threads", args.threads])
               for side in ("smallmind", "torch")]
    try:
        times = {(w.side, p): [] for w in workers for p in products}
        for _ in range(args.repeats):
            for p in products:
                for w in workers:
                    times[w.side, p].append(w.ask(product=p)["seconds"])
    finally:
        for w in workers:
            w.close()

    rows = workers[0].ready["rows"]
    print(f"CPU {cpu_model()}; load average at the end {load_average()}")
    print(f"preset {args.preset}, {rows} rows, threads {args.threads}, smallmind {workers[0].ready['kernels']}, "
          f"torch {workers[1].ready['torch']}; each side in its own process, {args.repeats} interleaved "
          f"repeats of {CALLS} calls; median GFLOPS")
    print(f"{'product':<24s} {'K x M':>12s} {'smallmind':>10s} {'torch':>8s} {'ratio':>6s}")
    sizes = shapes(args.preset)
    total = {"smallmind": 0.0, "torch": 0.0}
    for name, kind in products:
        K, M = sizes[name]
        flops = 2.0 * rows * K * M
        medians = {side: statistics.median(times[side, (name, kind)]) for side in total}
        for side in total:
            total[side] += medians[side]
        print(f"{name + ' ' + kind:<24s} {f'{K} x {M}':>12s} {flops / medians['smallmind'] / 1e9:10.1f} "
              f"{flops / medians['torch'] / 1e9:8.1f} {medians['torch'] / medians['smallmind']:5.2f}x")
    print(f"all products, time: smallmind {total['smallmind'] * 1e3:.1f} ms, torch {total['torch'] * 1e3:.1f} ms, "
          f"ratio {total['torch'] / total['smallmind']:.2f}x")


if __name__ == "__main__":
    main()
