"""The training loop: data -> tokenizer -> GPT -> AdamW, with evaluation and checkpoints.

A run is fixed by its TrainConfig: the same config and data give bit-identical losses, and
a run resumed from its `last` checkpoint continues exactly as if it had never stopped (the
checkpoint holds the weights, AdamW moments, step, and the states of the data-sampling and
dropout generators). Ctrl-C or SIGTERM finishes the current step, saves `last` and stops
cleanly.

Out directory (when `out` is set):
  best/            checkpoint with the lowest validation loss (weights, tokenizer, config)
  last/            checkpoint at the latest evaluation, with optimizer and trainer state
  loss_curve.png   per-step training loss and the evaluated train/validation losses

precision="bf16" runs the products in BF16 with float32 master weights and optimizer state
(models/gpt_train.py); it is refused on CPUs without AVX512-BF16 or AMX-BF16. Where the CPU
has AVX512-BF16, the native GEMM runs them on its BF16 tiles (AMX-BF16 where the process may
use AMX, else dpbf16ps; tested through their emulated builds, their speed not yet measured on
such a CPU). Given the
machine's measured peak (peak_gflops), each evaluation's log line and the result report the
model FLOPs utilisation: achieved training FLOPs / that peak.
"""

import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from .. import kernels
from ..errors import CheckpointError, SmallMindError
from ..formats import text_data
from ..formats.checkpoint import BEST, LAST, has_checkpoint, load_checkpoint, save_checkpoint
from ..formats.tokenizer import KINDS, train_tokenizer
from ..models import gpt_train
from ..memory import require
from ..models.gpt import init_params, param_shapes, preset
from ..scope import scope
from .optim import AdamW, clip_grad_norm, lr_at

LOSS_CURVE = "loss_curve.png"
# Fields a resumed run may change without breaking the exact continuation of its trajectory
# (`steps` may grow: the cosine schedule then stretches from that point on).
RESUMABLE_CHANGES = {"steps", "out", "resume", "overwrite", "data", "max_corpus_chars"}
# Fields whose None default is resolved from others (see TrainConfig.resolved).
DERIVED_DEFAULTS = ("seq", "dropout", "min_lr", "warmup_steps")
# Settings added after checkpoints were first written, with the value those runs used.
ADDED_SETTINGS = {"precision": "fp32"}


# (field, accepted types (None: may be None), what to say) for TrainConfig.__post_init__
_INT, _NUMBER, _PATH = (int,), (int, float), (str, os.PathLike)
_FIELD_TYPES = (
    *((name, _INT, "an integer") for name in (
        "steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "seed", "max_corpus_chars")),
    *((name, (*_INT, None), "an integer or None") for name in ("seq", "warmup_steps")),
    *((name, _NUMBER, "a finite number") for name in ("max_lr", "weight_decay", "grad_clip", "val_fraction")),
    *((name, (*_NUMBER, None), "a finite number or None") for name in ("dropout", "min_lr")),
    ("preset", (str,), "a preset name"),
    ("tokenizer", (str,), "a tokenizer kind"),
    ("precision", (str,), "a precision name"),
    *((name, (*_PATH, None), "a path or None") for name in ("data", "out")),
    *((name, (bool,), "True or False") for name in ("resume", "overwrite")),
)


@dataclass(frozen=True)
class TrainConfig:
    data: str | None = None          # file or directory of UTF-8 text; None = stdlib source
    preset: str = "seed"
    tokenizer: str = "bpe"           # "char" or "bpe"
    precision: str = "fp32"          # "fp32" or "bf16" (products in BF16, float32 master weights)
    steps: int = 1000                # optimizer steps in the whole run (the LR schedule's length)
    batch_size: int = 16
    seq: int | None = None           # None = the preset's context length
    dropout: float | None = None     # None = the preset's dropout
    grad_accum: int = 1              # micro-batches per optimizer step
    max_lr: float = 1e-3
    min_lr: float | None = None      # None = max_lr / 10
    warmup_steps: int | None = None  # None = min(100, steps // 10)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 0
    val_fraction: float = 0.1
    max_corpus_chars: int = text_data.DEFAULT_CORPUS_CHARS  # caps only the default corpus
    out: str | None = None
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self):
        # types here, ranges in resolved(): a float step count would run a step too many and
        # never reach the save at `step == steps`
        for name, kinds, what in _FIELD_TYPES:
            value = getattr(self, name)
            if value is None and None in kinds:
                continue
            types = tuple(k for k in kinds if k is not None)
            ok = isinstance(value, bool) if bool in types else isinstance(value, types) and not isinstance(value, bool)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise SmallMindError(f"TrainConfig {name} must be {what}, got {value!r}")
            if types == _PATH:
                object.__setattr__(self, name, os.fspath(value))  # saved as JSON in the trainer state
        if self.seed < 0:
            raise SmallMindError(f"TrainConfig seed must be a non-negative integer, got {self.seed!r}")

    def resolved(self) -> "TrainConfig":
        """This config with its defaults filled in and every value checked."""
        model = preset(self.preset)
        cfg = replace(
            self,
            seq=model.context_length if self.seq is None else self.seq,
            dropout=model.dropout if self.dropout is None else self.dropout,
            min_lr=self.max_lr / 10 if self.min_lr is None else self.min_lr,
            warmup_steps=min(100, self.steps // 10) if self.warmup_steps is None else self.warmup_steps,
        )
        checks = [
            (cfg.tokenizer in KINDS, f"unknown tokenizer {cfg.tokenizer!r}; choose one of {', '.join(KINDS)}"),
            (cfg.precision in gpt_train.PRECISIONS,
             f"unknown precision {cfg.precision!r}; choose one of {', '.join(gpt_train.PRECISIONS)}"),
            (cfg.steps >= 1, f"steps must be at least 1, got {cfg.steps}"),
            (cfg.batch_size >= 1, f"batch size must be at least 1, got {cfg.batch_size}"),
            (1 <= cfg.seq <= model.context_length,
             f"seq must be in [1, {model.context_length}] for preset {cfg.preset!r}, got {cfg.seq}"),
            (0 <= cfg.dropout < 1, f"dropout must be in [0, 1), got {cfg.dropout}"),
            (cfg.grad_accum >= 1, f"grad accumulation must be at least 1, got {cfg.grad_accum}"),
            (cfg.max_lr > 0 and math.isfinite(cfg.max_lr), f"learning rate must be positive, got {cfg.max_lr}"),
            (0 <= cfg.min_lr <= cfg.max_lr, f"min lr must be in [0, max lr], got {cfg.min_lr}"),
            (cfg.warmup_steps >= 0, f"warmup steps must be non-negative, got {cfg.warmup_steps}"),
            (cfg.warmup_steps <= cfg.steps,
             f"warmup steps ({cfg.warmup_steps}) must not exceed steps ({cfg.steps}): the learning rate would "
             "never reach its peak"),
            (cfg.weight_decay >= 0, f"weight decay must be non-negative, got {cfg.weight_decay}"),
            (cfg.grad_clip > 0, f"grad clip must be positive, got {cfg.grad_clip}"),
            (cfg.eval_every >= 1, f"eval every must be at least 1, got {cfg.eval_every}"),
            (cfg.eval_batches >= 1, f"eval batches must be at least 1, got {cfg.eval_batches}"),
            (0 < cfg.val_fraction < 1, f"validation fraction must be in (0, 1), got {cfg.val_fraction}"),
            (not (cfg.resume and cfg.overwrite), "choose --resume or --overwrite, not both"),
            (cfg.out is not None or not cfg.resume, "resuming needs the out directory of the run"),
        ]
        for ok, message in checks:
            if not ok:
                raise SmallMindError(message)
        return cfg


def bf16_refusal() -> str | None:
    """Why --precision bf16 cannot run on this CPU, or None when it can."""
    support = kernels.bf16_support()
    if support["avx512_bf16"] or support["amx_bf16"]:
        return None
    return ("--precision bf16 needs a CPU with AVX512-BF16 or AMX-BF16 enabled by the OS; this one has neither "
            "(use --precision fp32)")


def mfu(tok_s: float, flops_per_token: float, peak_gflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved training FLOPs per second over the measured peak."""
    if not peak_gflops or tok_s <= 0:
        return None
    return tok_s * flops_per_token / (peak_gflops * 1e9)


def train(cfg: TrainConfig, progress: bool = True, log=None, peak_gflops: float | None = None) -> dict:
    """Run (or resume) training; returns the figures of the run (see the end of this function).

    progress: show a progress bar on stderr. log: a callable given one line of text per
    evaluation (for logs, where a progress bar is noise). peak_gflops: the machine's measured
    float32 peak (profiler.machine), for the model FLOPs utilisation; None leaves it out."""
    if not isinstance(cfg, TrainConfig):
        raise SmallMindError(f"train needs a TrainConfig, got {type(cfg).__name__}")
    out = Path(cfg.out) if cfg.out is not None else None
    resumed = _check_out_dir(cfg, out)
    if resumed is not None:
        # settings left to their defaults resolve as they did when the run started
        saved = resumed.trainer_state.get("train_config") or {}
        cfg = replace(cfg, **{k: saved[k] for k in DERIVED_DEFAULTS if getattr(cfg, k) is None and k in saved})
    cfg = cfg.resolved()
    if cfg.precision == "bf16" and bf16_refusal():
        raise SmallMindError(bf16_refusal())
    # the tokenizer's vocabulary is at most the preset's, so this bounds a new model too
    _check_memory(cfg, resumed.params.cfg if resumed is not None else preset(cfg.preset, dropout=cfg.dropout))

    docs = text_data.load_documents(cfg.data, max_chars=cfg.max_corpus_chars)
    data_id = text_data.fingerprint(docs)
    train_text, val_text = text_data.split_documents(docs, cfg.val_fraction)
    del docs
    if resumed is not None:
        state = resumed.trainer_state
        _check_resume_matches(cfg, state, data_id)
        tokenizer, params = resumed.tokenizer, resumed.params
    else:
        state = None
        # the vocabulary covers validation text too: an id for every character the model will see
        tokenizer = train_tokenizer(cfg.tokenizer, train_text + val_text, preset(cfg.preset).vocab_size)
        params = init_params(preset(cfg.preset, vocab_size=tokenizer.vocab_size, dropout=cfg.dropout), seed=cfg.seed)
    model_cfg = params.cfg
    train_tokens = tokenizer.encode(train_text)
    val_tokens = tokenizer.encode(val_text)
    del train_text, val_text

    B, T = cfg.batch_size, cfg.seq
    sampler = text_data.BatchSampler(train_tokens, B, T, seed=cfg.seed + 1, what="training")
    val_batches = text_data.evenly_spaced_batches(val_tokens, B, T, cfg.eval_batches, what="validation")
    train_eval_batches = text_data.evenly_spaced_batches(train_tokens, B, T, cfg.eval_batches, what="training")
    dropout_rng = np.random.default_rng(cfg.seed + 2)
    ws = gpt_train.TrainWorkspace(model_cfg, B, T, cfg.precision)
    grads = params.zeros_like()
    optimizer = AdamW(params, weight_decay=cfg.weight_decay)

    if state is not None:
        optimizer.load_state_dict(resumed.optimizer_state)
        sampler.state = state["sampler_state"]
        dropout_rng.bit_generator.state = state["dropout_state"]
        step, best_val, best_step = state["step"], state["best_val_loss"], state["best_step"]
        train_losses, evals = list(state["train_losses"]), list(state["evals"])
    else:
        step, best_val, best_step, train_losses, evals = 0, math.inf, 0, [], []

    def trainer_state() -> dict:
        return {
            "step": step, "best_val_loss": best_val, "best_step": best_step,
            "sampler_state": sampler.state, "dropout_state": dropout_rng.bit_generator.state,
            "train_losses": train_losses, "evals": evals,
            "train_config": asdict(cfg), "data_fingerprint": data_id,
        }

    def save(name: str, with_optimizer: bool) -> None:
        save_checkpoint(out / name, config=model_cfg, params=params, tokenizer=tokenizer,
                        optimizer_state=optimizer.state_dict() if with_optimizer else None,
                        trainer_state=trainer_state())

    tokens_per_step = B * T * cfg.grad_accum
    flops_per_token = gpt_train.train_flops_per_token(model_cfg, T)
    start_step, train_seconds = step, 0.0

    def evaluate() -> None:
        nonlocal best_val, best_step
        val_loss = _mean_loss(params, ws, val_batches)
        train_loss = _mean_loss(params, ws, train_eval_batches)
        evals.append({"step": step, "train": train_loss, "val": val_loss})
        if log is not None:
            speed = ""
            if train_seconds > 0:
                tok_s = (step - start_step) * tokens_per_step / train_seconds
                speed = f"  {tok_s:,.0f} tok/s"
                utilisation = mfu(tok_s, flops_per_token, peak_gflops)
                if utilisation is not None:
                    speed += f"  MFU {100 * utilisation:.1f}%"
            log(f"step {step}/{cfg.steps}  train loss {train_loss:.4f}  val loss {val_loss:.4f}{speed}")
        improved = val_loss < best_val
        if improved:
            best_val, best_step = val_loss, step
        if out is not None:
            if improved:
                save(BEST, with_optimizer=False)
            save(LAST, with_optimizer=True)
            _plot_loss_curve(out / LOSS_CURVE, train_losses, evals)

    bar = _progress_bar(progress, cfg.steps, step)
    interrupt = _InterruptFlag()
    try:
        with interrupt:
            if not evals:
                evaluate()
            while step < cfg.steps and not interrupt.raised:
                t0 = time.perf_counter()
                loss = _train_step(cfg, step, params, grads, ws, optimizer, sampler, dropout_rng)
                train_seconds += time.perf_counter() - t0
                step += 1
                train_losses.append(loss)
                tok_s = (step - start_step) * tokens_per_step / max(train_seconds, 1e-9)
                bar.update(1)
                bar.set_postfix_str(f"loss {loss:.4f}  {tok_s:,.0f} tok/s", refresh=False)
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    evaluate()
            if interrupt.raised and out is not None and evals[-1]["step"] != step:
                save(LAST, with_optimizer=True)
    finally:
        bar.close()

    last = evals[-1]
    trained = step - start_step
    tok_s = trained * tokens_per_step / train_seconds if trained else 0.0
    # train_loss and val_loss are the last evaluation's, over fixed batches without dropout;
    # tok_s counts training steps only (not evaluation or saving)
    return {
        "steps": step,
        "train_loss": last["train"],
        "val_loss": last["val"],
        "eval_step": last["step"],
        "best_val_loss": best_val,
        "best_step": best_step,
        "last_step_loss": train_losses[-1] if train_losses else None,
        "tok_s": tok_s,
        "mfu": mfu(tok_s, flops_per_token, peak_gflops),
        "peak_gflops": peak_gflops,
        "flops_per_token": flops_per_token,
        "precision": cfg.precision,
        "train_seconds": train_seconds,
        "tokens": trained * tokens_per_step,
        "params": params.count,
        "vocab_size": model_cfg.vocab_size,
        "tokenizer": tokenizer.kind,
        "preset": cfg.preset,
        "out": str(out) if out is not None else None,
        "interrupted": interrupt.raised,
        "signal": signal.Signals(interrupt.signum).name if interrupt.raised else None,
    }


def _check_memory(cfg: TrainConfig, model_cfg) -> None:
    """Refuse a batch size, sequence length or evaluation batch count whose buffers cannot fit,
    before any is allocated (the corpus and its tokens come on top)."""
    B, T, n = cfg.batch_size, cfg.seq, cfg.eval_batches
    weights = 4 * 4 * sum(math.prod(shape) for _, shape, _ in param_shapes(model_cfg))  # params, grads, m, v
    sampler = B * (T + 1) * 12 + 2 * B * T * 4
    evals = 2 * n * B * (8 + (T + 1) * 4 + 2 * T * 4)  # train and validation: starts, windows, x and y
    workspace = gpt_train.TrainWorkspace.nbytes_for(model_cfg, B, T, cfg.precision)
    require(weights + sampler + evals + workspace,
            f"training with batch size {B}, sequence length {T} and {n} evaluation batches",
            "use a smaller --batch-size, --seq or --eval-batches")


def _train_step(cfg, step, params, grads, ws, optimizer, sampler, dropout_rng) -> float:
    # one optimizer step over cfg.grad_accum micro-batches; returns their mean loss
    lr = lr_at(step, max_lr=cfg.max_lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
    with scope("step"):
        grads.flat.fill(0.0)
        loss = 0.0
        for _ in range(cfg.grad_accum):
            x, y = sampler.next()
            loss += gpt_train.forward(params, ws, x, y, dropout_rng=dropout_rng) / cfg.grad_accum
            gpt_train.backward(params, grads, ws, loss_scale=1.0 / cfg.grad_accum)
        if not math.isfinite(loss):
            raise SmallMindError(f"training diverged: the loss is {loss} at step {step + 1}; try a lower --lr")
        clip_grad_norm(grads.flat, cfg.grad_clip)
        optimizer.step(grads, lr)
    return loss


def _mean_loss(params, ws, batches) -> float:
    # the mean loss over fixed batches, without dropout
    return float(np.mean([gpt_train.forward(params, ws, x, y) for x, y in batches]))


def _check_out_dir(cfg: TrainConfig, out: Path | None):
    """The checkpoint to resume from (or None), after refusing to clobber an existing run."""
    if out is None:
        return None
    if out.exists() and not out.is_dir():
        raise SmallMindError(f"out path {out} exists and is not a directory")
    nearest = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise SmallMindError(f"cannot write to {out}: {nearest} is not writable")
    if cfg.resume:
        if not has_checkpoint(out / LAST):
            raise CheckpointError(f"nothing to resume: {out} holds no {LAST}/ checkpoint")
        ckpt = load_checkpoint(out / LAST)
        if ckpt.optimizer_state is None or ckpt.trainer_state is None:
            raise CheckpointError(f"{out / LAST} lacks the optimizer or trainer state needed to resume")
        check_trainer_state(ckpt.trainer_state, out / LAST)
        return ckpt
    if has_checkpoint(out) and not cfg.overwrite:
        raise SmallMindError(
            f"{out} already holds a checkpoint; pass --resume to continue it or --overwrite to replace it")
    return None


def check_trainer_state(state: dict, where) -> None:
    """Refuse (CheckpointError, naming the key) a trainer state that a resume could not use,
    before any data is loaded or any step is trained."""
    def bad(key, why):
        return CheckpointError(f"{where}: the trainer state's {key!r} {why}; the checkpoint is damaged")

    keys = ("step", "best_val_loss", "best_step", "sampler_state", "dropout_state", "train_losses", "evals",
            "train_config", "data_fingerprint")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{where}: the trainer state lacks {missing[0]!r}; the checkpoint is damaged")
    step = state["step"]
    if not _is_int(step) or step < 0:
        raise bad("step", f"must be a non-negative integer, not {step!r}")
    if not _is_int(state["best_step"]) or not 0 <= state["best_step"] <= step:
        raise bad("best_step", f"must be an integer in [0, step], not {state['best_step']!r}")
    if not _is_number(state["best_val_loss"]) or math.isnan(state["best_val_loss"]):
        raise bad("best_val_loss", f"must be a number, not {state['best_val_loss']!r}")
    for key in ("sampler_state", "dropout_state"):
        try:  # the generators' own check, on a throwaway one
            np.random.default_rng().bit_generator.state = state[key]
        except (TypeError, ValueError, KeyError, OverflowError):
            raise bad(key, "is not a random generator state") from None
    losses = state["train_losses"]
    if not isinstance(losses, list) or len(losses) != step or not all(_is_number(x) for x in losses):
        raise bad("train_losses", f"must be a list of {step} numbers, one per step")
    evals = state["evals"]
    if not isinstance(evals, list) or not all(
            isinstance(e, dict) and _is_int(e.get("step")) and 0 <= e["step"] <= step
            and _is_number(e.get("train")) and _is_number(e.get("val")) for e in evals):
        raise bad("evals", "must be a list of {step, train, val} records up to the saved step")
    if not isinstance(state["train_config"], dict):
        raise bad("train_config", "must be an object of settings")
    for name, value in ADDED_SETTINGS.items():
        state["train_config"].setdefault(name, value)
    lacking = [f.name for f in fields(TrainConfig) if f.name not in state["train_config"]]
    if lacking:
        raise bad("train_config", f"lacks the setting {lacking[0]!r}")
    if not isinstance(state["data_fingerprint"], str):
        raise bad("data_fingerprint", "must be text")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_resume_matches(cfg: TrainConfig, state: dict, data_id: str) -> None:
    try:
        saved = state["train_config"]
        for f in fields(TrainConfig):
            if f.name not in RESUMABLE_CHANGES and saved[f.name] != getattr(cfg, f.name):
                raise SmallMindError(
                    f"cannot resume: {f.name} is {getattr(cfg, f.name)!r} but the run was started with "
                    f"{saved[f.name]!r}")
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"the checkpoint's trainer state is malformed ({e})") from None
    if state.get("data_fingerprint") != data_id:
        raise SmallMindError("cannot resume: the training data differs from the data the run was started with")
    if cfg.steps < state["step"]:
        raise SmallMindError(f"cannot resume: the run is already at step {state['step']}, beyond --steps {cfg.steps}")


class _InterruptFlag:
    """Within `with`, the first Ctrl-C or SIGTERM (what `kill` and service managers send)
    only sets .raised and .signum (the loop stops after the step, saving `last`); a second
    one interrupts at once. Outside the main thread signals are left alone."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.raised = False
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised, self.signum = True, signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False


def _progress_bar(enabled: bool, total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, file=sys.stderr, unit="step",
                dynamic_ncols=True, desc="train")


def _plot_loss_curve(path: Path, train_losses: list, evals: list) -> None:
    """Per-step training loss plus the evaluated train and validation losses, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        steps = np.arange(1, len(train_losses) + 1)
        ax.plot(steps, train_losses, lw=0.6, alpha=0.5, color="tab:blue", label="train (per step)")
        eval_steps = [e["step"] for e in evals]
        ax.plot(eval_steps, [e["train"] for e in evals], "o-", ms=3, color="tab:blue", label="train (eval)")
        ax.plot(eval_steps, [e["val"] for e in evals], "o-", ms=3, color="tab:orange", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
