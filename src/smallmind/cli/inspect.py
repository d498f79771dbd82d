"""`smallmind inspect FILE [--json] [--ctx N]`: what a model file holds and what running it takes.

Reads the metadata and tensor table only (the weights stay on disk): architecture, context,
parameter count, tensors by type with their bytes, tokenizer kind, whether a chat template is
present, and the memory a session needs at a given context (weights mapped from the file plus
the KV cache).
"""

import json

from . import positive_int


def add_parser(sub):
    p = sub.add_parser("inspect", help="describe a GGUF file or checkpoint: architecture, tensors, memory")
    p.add_argument("path", metavar="FILE", help="a GGUF file or a checkpoint directory")
    p.add_argument("--ctx", type=positive_int, default=None, metavar="N",
                   help="context for the memory estimate (default: the smaller of the model's and 4096)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(run=run)


def run(args):
    from ..runtime.model_info import describe

    info = describe(args.path, ctx=args.ctx)
    if args.json:
        print(json.dumps(info))
        return 0
    rows = [
        ("name", info["name"]),
        ("architecture", info["architecture"]),
        ("file", f"{info['path']} ({_mb(info['file_bytes'])})"),
        ("context", f"{info['context_length']:,} trained; {info['ctx']:,} for this estimate"),
        ("parameters", f"{info['parameters']:,}"),
        ("layers", f"{info['n_layers']}, d_model {info['d_model']}, vocab {info['vocab_size']:,}"),
        ("tokenizer", info["tokenizer"]),
        ("chat template", {True: "yes", False: "no (the architecture's turn format is used)",
                           None: "none (a checkpoint: generate only)"}[info["chat_template"]]),
    ]
    for t in info["tensor_types"]:
        rows.append((f"  {t['type']}", f"{t['count']} tensors, {t['parameters']:,} parameters, {_mb(t['bytes'])}"))
    mem = info["memory"]
    rows.append(("memory", f"{_mb(mem['total_bytes'])} at ctx {info['ctx']:,}: weights {_mb(mem['weights_bytes'])}, "
                           f"KV cache {_mb(mem['kv_cache_bytes'])}, workspace {_mb(mem['workspace_bytes'])}"))
    width = max(len(label) for label, _ in rows)
    print("\n".join(f"{label.ljust(width)} : {value}" for label, value in rows))
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
