"""`smallmind quantize IN OUT --type T [--force]`: a SmallMind checkpoint or a GGUF file as a GGUF
file in GGUF's block formats, with llama.cpp's mixtures (formats/quant_recipe.py), then a
quality report: perplexity before and after on held-out text, file sizes, bits per weight.

A GGUF input is requantized from what it stores (formats/gguf_requantize.py); a checkpoint is
exported as a gpt2 file (formats/gguf_export.py)."""

import json
import sys
from collections import Counter
from pathlib import Path

from . import positive_int

TYPE_HELP = ("F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K (llama.cpp's Q4_K_S), Q5_K (Q5_K_S), Q6_K, "
             "Q4_K_M, Q5_K_M")
DEFAULT_EVAL_CHUNKS = 4


def add_parser(sub):
    from ..formats.quant_recipe import FILE_TYPES

    p = sub.add_parser("quantize", help="quantize a checkpoint or GGUF file into GGUF block formats")
    p.add_argument("input", metavar="IN", help="a GGUF file or a checkpoint directory")
    p.add_argument("out", metavar="OUT", help="the GGUF file to write")
    p.add_argument("--type", required=True, choices=list(FILE_TYPES), metavar="T", help=TYPE_HELP)
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="held-out text for the quality report (default: the held-out part of the stdlib source)")
    p.add_argument("--ctx", type=positive_int, default=None, metavar="N",
                   help="perplexity window for the report (default: the smaller of the model's context and 512)")
    p.add_argument("--eval-chunks", type=positive_int, default=DEFAULT_EVAL_CHUNKS, metavar="N",
                   help=f"windows the report evaluates on each model (default: {DEFAULT_EVAL_CHUNKS})")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity part of the report")
    p.add_argument("--threads", type=positive_int, help="thread budget for BLAS and native kernels")
    p.add_argument("--json", action="store_true", help="end with one JSON object: the report")
    p.set_defaults(run=run)


class TensorProgress:
    """A tqdm bar over the tensors written (on a terminal only)."""

    def __init__(self, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(desc=desc, unit="tensor", file=sys.stderr, disable=None, leave=False)

    def update(self, plan) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def conversion_report(out, file_type: str, size: int, plans, fallbacks) -> dict:
    values = sum(_count(p.shape) for p in plans)
    return {
        "out": str(out),
        "type": file_type,
        "bytes": size,
        "bits_per_weight": 8.0 * sum(p.nbytes for p in plans) / values,
        "tensor_types": dict(Counter(p.qtype for p in plans).most_common()),
        "fallbacks": [list(f) for f in fallbacks],
    }


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def input_stats(path, kind: str) -> tuple[int, float]:
    """(bytes, bits per weight) of the input model's weights."""
    if kind == "checkpoint":
        from ..formats.checkpoint import MODEL, resolve_checkpoint_dir

        return (resolve_checkpoint_dir(path) / MODEL).stat().st_size, 32.0
    from ..formats.gguf import GGUFFile

    with GGUFFile(path) as f:
        infos = f.tensor_infos
    return Path(path).stat().st_size, 8.0 * sum(t.nbytes for t in infos) / sum(_count(t.shape) for t in infos)


def run(args):
    from .. import kernels
    from ..formats.gguf_export import export_checkpoint
    from ..formats.gguf_requantize import requantize_gguf
    from ..formats.gguf_write import check_output_path
    from .export import print_report

    if args.threads is not None:
        kernels.set_threads(args.threads)
    check_output_path(args.out, args.force)
    from ..runtime.model import model_kind

    kind = model_kind(args.input)
    convert = export_checkpoint if kind == "checkpoint" else requantize_gguf
    bar = TensorProgress("quantize")
    try:
        size, plans, fallbacks = convert(args.input, args.out, args.type, force=args.force, progress=bar.update)
    finally:
        bar.close()
    report = conversion_report(args.out, args.type, size, plans, fallbacks)
    report["input_bytes"], report["input_bits_per_weight"] = input_stats(args.input, kind)
    if not args.no_eval:
        report.update(quality(args))
    if args.json:
        print(json.dumps(report))
        return 0
    print_report(report)
    print(f"size: {report['input_bytes']:,} -> {report['bytes']:,} bytes "
          f"({report['bytes'] / report['input_bytes']:.1%}); bits per weight "
          f"{report['input_bits_per_weight']:.2f} -> {report['bits_per_weight']:.2f}")
    if "perplexity_before" in report:
        change = report["perplexity_after"] / report["perplexity_before"] - 1
        print(f"perplexity on held-out text: {report['perplexity_before']:.4f} -> {report['perplexity_after']:.4f} "
              f"({change:+.2%}; {report['eval_tokens']:,} tokens in windows of {report['eval_ctx']})")
    elif "eval_skipped" in report:
        print(f"perplexity not measured: {report['eval_skipped']}")
    return 0


def quality(args) -> dict:
    """Perplexity of the input and of the output on the same held-out windows."""
    from ..errors import SmallMindError
    from ..runtime.model import load
    from .perplexity import held_out_text, measure

    try:
        text = held_out_text(args.data)
        before = measure(load(args.input), text, args.ctx, args.eval_chunks, "perplexity before")
        after = measure(load(args.out), text, before.ctx, args.eval_chunks, "perplexity after")
    except SmallMindError as e:
        # the file is written: a text too short to measure on is reported, not an error
        return {"eval_skipped": str(e)}
    return {"perplexity_before": before.perplexity, "perplexity_after": after.perplexity,
            "eval_tokens": after.tokens, "eval_ctx": after.ctx}
