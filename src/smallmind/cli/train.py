"""`smallmind train`: train a GPT on a text file or directory (default: the stdlib source).

With --resume, flags left out take the values the run was started with, so
`smallmind train --out DIR --resume` continues exactly where DIR's last checkpoint stopped.
"""

import json
import math
import signal
import sys

from . import THREADS_HELP, bounded_float, nonneg_int, positive_int, set_thread_budget


def add_parser(sub):
    from ..formats.tokenizer import KINDS
    from ..models.gpt import PRESETS
    from ..models.gpt_train import PRECISIONS

    p = sub.add_parser("train", help="train a GPT from scratch on text")
    p.add_argument("--data", help="UTF-8 text file or directory (default: this Python's stdlib source)")
    p.add_argument("--preset", choices=list(PRESETS), help="model preset (default: seed)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps in the whole run (default: 1000)")
    p.add_argument("--out", required=True, help="directory for the best/ and last/ checkpoints and the loss curve")
    p.add_argument("--tokenizer", choices=list(KINDS), help="tokenizer kind (default: bpe)")
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="fp32, or bf16: products in BF16 with float32 master weights, on CPUs with AVX512-BF16 "
                        "or AMX-BF16 (default: fp32)")
    p.add_argument("--seed", type=nonneg_int, help="seed for weights, batches and dropout (default: 0)")
    p.add_argument("--batch-size", type=positive_int, help="sequences per micro-batch (default: 16)")
    p.add_argument("--seq", type=positive_int, help="tokens per sequence (default: the preset's context)")
    p.add_argument("--dropout", type=bounded_float(0.0, 0.99), help="dropout rate (default: the preset's)")
    p.add_argument("--grad-accum", type=positive_int, help="micro-batches per optimizer step (default: 1)")
    p.add_argument("--lr", dest="max_lr", metavar="LR", type=bounded_float(0.0, 10.0, low_open=True),
                   help="peak learning rate (default: 1e-3)")
    p.add_argument("--min-lr", type=bounded_float(0.0, 10.0), help="final learning rate (default: lr / 10)")
    p.add_argument("--warmup", dest="warmup_steps", metavar="N", type=nonneg_int,
                   help="warmup steps (default: min(100, steps / 10))")
    p.add_argument("--weight-decay", type=bounded_float(0.0, 10.0), help="AdamW weight decay (default: 0.1)")
    p.add_argument("--grad-clip", type=bounded_float(0.0, math.inf, low_open=True),
                   help="max gradient norm (default: 1.0)")
    p.add_argument("--eval-every", type=positive_int, help="steps between evaluations and saves (default: 100)")
    p.add_argument("--eval-batches", type=positive_int, help="batches per evaluation (default: 8)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoints already in --out")
    p.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.set_defaults(run=run)


# flags whose dest is a TrainConfig field; left out, they take TrainConfig's default (or, with
# --resume, the value the run was started with)
CONFIG_FLAGS = ("data", "preset", "steps", "tokenizer", "precision", "seed", "batch_size", "seq", "dropout",
                "grad_accum", "max_lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip", "eval_every",
                "eval_batches")


def run(args):
    from ..errors import SmallMindError
    from ..formats.checkpoint import LAST
    from ..profiler.machine import gemm_gflops
    from ..runtime.trainer import TrainConfig, bf16_refusal, train

    given = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    base = _saved_config(args.out) if args.resume else {}
    cfg = TrainConfig(**{**base, **given, "out": args.out, "resume": args.resume, "overwrite": args.overwrite})
    set_thread_budget(args.threads, "train")
    if cfg.precision == "bf16" and bf16_refusal():  # before the peak is measured or any data loads
        raise SmallMindError(bf16_refusal())
    peak = gemm_gflops()  # at this thread budget, as the profiler's roofline measures it

    on_terminal = sys.stderr.isatty()
    result = train(cfg, progress=on_terminal,
                   log=None if on_terminal else lambda line: print(line, file=sys.stderr, flush=True),
                   peak_gflops=peak)
    if result["interrupted"]:
        print(f"smallmind train: interrupted ({result['signal']}) at step {result['steps']}; {args.out}/{LAST} "
              f"is saved, continue with --resume", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"steps {result['steps']}  train loss {result['train_loss']:.4f}  val loss {result['val_loss']:.4f}  "
              f"best val {result['best_val_loss']:.4f} (step {result['best_step']})")
        print(f"{result['params']:,} parameters  {result['tok_s']:,.0f} tok/s  MFU {100 * (result['mfu'] or 0):.1f}% "
              f"of {result['peak_gflops']:,.0f} GFLOPS ({result['precision']})  checkpoints in {result['out']}")
    # the shell's convention for a process ended by a signal: 128 + its number
    return 128 + signal.Signals[result["signal"]] if result["interrupted"] else 0


def _saved_config(out: str) -> dict:
    """The TrainConfig fields of the run saved in out/last, for flags a resume leaves out."""
    from dataclasses import fields
    from pathlib import Path

    from ..errors import CheckpointError
    from ..formats.checkpoint import LAST, has_checkpoint, load_checkpoint
    from ..runtime.trainer import TrainConfig

    last = Path(out) / LAST
    if not has_checkpoint(last):
        raise CheckpointError(f"nothing to resume: {out} holds no {LAST}/ checkpoint")
    state = load_checkpoint(last).trainer_state or {}
    saved = state.get("train_config")
    known = {f.name for f in fields(TrainConfig)}
    if not isinstance(saved, dict) or not set(saved) <= known:
        raise CheckpointError(f"{last} has no usable training config in its trainer state")
    return saved
