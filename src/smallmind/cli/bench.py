"""`smallmind bench train|decode|prefill`: one benchmark, figures printed, JSON last."""

import json

from . import THREADS_HELP, positive_int, thread_budget


def add_parser(sub):
    p = sub.add_parser("bench", help="measure training or inference speed")
    p.add_argument("what", choices=["train", "decode", "prefill"])
    p.add_argument("--preset", default="seed", help="model preset (default: seed)")
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    p.add_argument("--repeats", type=positive_int, default=3, help="measured repetitions (median reported)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(run=run)


def run(args):
    from ..models.gpt import preset

    preset(args.preset)  # a clear error for an unknown preset before anything heavy loads
    if args.what == "train":
        from ..bench.train import bench_train as bench
    elif args.what == "decode":
        from ..bench.inference import bench_decode as bench
    else:
        from ..bench.inference import bench_prefill as bench
    result = bench(args.preset, threads=thread_budget(args.threads, "bench"), repeats=args.repeats)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0
