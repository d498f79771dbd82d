"""`smallmind bench train|decode|prefill`: one benchmark, figures printed, JSON last."""

import json

from . import THREADS_HELP, add_mmap, mmap_choice, positive_int, thread_budget


def add_parser(sub):
    p = sub.add_parser("bench", help="measure training or inference speed")
    p.add_argument("what", choices=["train", "decode", "prefill"])
    p.add_argument("--model", metavar="PATH", default=None,
                   help="decode/prefill: a GGUF file or checkpoint directory (default: --preset's random weights)")
    p.add_argument("--preset", default=None, help="model preset (default: seed)")
    p.add_argument("--prompt-tokens", type=positive_int, default=None, metavar="P",
                   help="decode: prompt length before decoding (default 32); prefill: tokens (default 128)")
    p.add_argument("--new-tokens", type=positive_int, default=50, metavar="N",
                   help="decode: tokens decoded (default 50)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="train: products in float32, or BF16 with float32 master weights (AVX512-BF16/AMX-BF16 CPUs)")
    p.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    p.add_argument("--repeats", type=positive_int, default=3, help="measured repetitions (median reported)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    add_mmap(p)
    p.set_defaults(run=run)


def run(args):
    from ..errors import SmallMindError
    from ..models.gpt import preset

    if args.model is not None and args.preset is not None:
        raise SmallMindError("give --model or --preset, not both")
    if args.model is not None and args.what == "train":
        raise SmallMindError("bench train measures a preset (--preset), not a model file")
    if args.precision != "fp32" and args.what != "train":
        raise SmallMindError("--precision applies to bench train only")
    name = args.preset or "seed"
    preset(name)  # a clear error for an unknown preset before anything heavy loads
    if args.what == "train":
        from ..bench.train import bench_train

        result = bench_train(name, threads=thread_budget(args.threads, "bench"), repeats=args.repeats,
                             precision=args.precision)
    else:
        from ..bench.inference import bench_decode, bench_prefill
        from ..runtime.model import load

        model = load(args.model, mmap=mmap_choice(args)) if args.model is not None else None
        threads = thread_budget(args.threads, "bench")
        if args.what == "decode":
            result = bench_decode(name, threads=threads, repeats=args.repeats, model=model,
                                  prompt_tokens=args.prompt_tokens or 32, new_tokens=args.new_tokens)
        else:
            result = bench_prefill(name, threads=threads, repeats=args.repeats, model=model,
                                   tokens=args.prompt_tokens or 128)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0
