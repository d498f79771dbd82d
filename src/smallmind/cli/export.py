"""`smallmind export CHECKPOINT OUT.gguf [--type T] [--force]`: a trained GPT checkpoint as a
GGUF file (architecture gpt2, its byte-level BPE tokenizer as the gpt2 tokenizer model) that
llama.cpp and `smallmind.load` run. CHECKPOINT is what `generate --model` takes."""

import json
import re

from .quantize import TYPE_HELP, TensorProgress, conversion_report


def add_parser(sub):
    from ..formats.quant_recipe import FILE_TYPES

    p = sub.add_parser("export", help="write a trained checkpoint as a GGUF file that llama.cpp runs")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a training run's --out directory (its best checkpoint) or one checkpoint directory")
    p.add_argument("out", metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--type", default="F32", choices=list(FILE_TYPES), metavar="T", help=TYPE_HELP + " (default: F32)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="end with one JSON object describing the file")
    p.set_defaults(run=run)


def run(args):
    from ..formats.gguf_export import export_checkpoint

    bar = TensorProgress("export")
    try:
        size, plans, fallbacks = export_checkpoint(args.checkpoint, args.out, args.type, force=args.force,
                                                   progress=bar.update)
    finally:
        bar.close()
    report = conversion_report(args.out, args.type, size, plans, fallbacks)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def print_report(report: dict) -> None:
    counts = ", ".join(f"{n} {t}" for t, n in report["tensor_types"].items())
    print(f"wrote {report['out']}: {report['type']}, {report['bytes']:,} bytes, "
          f"{report['bits_per_weight']:.2f} bits per weight ({counts})")
    groups = {}
    for name, wanted, got in report["fallbacks"]:
        groups.setdefault((wanted, got), []).append(name)
    for (wanted, got), names in groups.items():
        kinds = sorted({re.sub(r"^blk\.\d+\.", "", n) for n in names})
        print(f"  fallback {wanted} -> {got} for {len(names)} matrices whose width is not a whole number of "
              f"{wanted} blocks ({', '.join(kinds)})")
