"""AdamW, the learning-rate schedule and gradient clipping, over the flat parameter buffer.

Params keeps the weight-decayed matrices in one leading segment of `flat` (`decay_size`
elements), so a whole optimizer step is two fused kernel calls: one with weight decay over
the matrices, one without over norms, biases and embeddings (as nanoGPT and GPT-2 do).
"""

import math

import numpy as np

from .. import kernels
from ..errors import CheckpointError, SmallMindError
from ..scope import scope


def lr_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimizer step `step` (from 0): linear warmup to max_lr, cosine to min_lr.

    Warmup reaches max_lr at step warmup_steps - 1 (step 0 already moves: lr = max_lr / warmup);
    the cosine runs from max_lr at warmup_steps to min_lr at total_steps, and stays there.
    """
    if step < 0 or warmup_steps < 0 or total_steps < 1:
        raise SmallMindError("lr schedule needs step >= 0, warmup_steps >= 0 and total_steps >= 1")
    if not 0.0 <= min_lr <= max_lr:
        raise SmallMindError(f"lr schedule needs 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def clip_grad_norm(grads_flat: np.ndarray, max_norm: float) -> float:
    """Scale grads_flat (N,) in place so its L2 norm is at most max_norm; returns the norm before.

    Same rule as torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is
    below 1. A non-finite norm leaves the gradients untouched so the caller can skip the step.
    """
    if not max_norm > 0:
        raise SmallMindError(f"max grad norm must be positive, got {max_norm}")
    with scope("optimizer"):
        norm = math.sqrt(float(np.dot(grads_flat, grads_flat)))
        if math.isfinite(norm):
            coef = max_norm / (norm + 1e-6)
            if coef < 1.0:
                grads_flat *= np.float32(coef)
    return norm


class AdamW:
    """AdamW with decoupled weight decay on params.flat[:decay_size] only.

    Moments live in two flat float32 buffers laid out like params.flat, so a step is two
    kernels.adamw_step calls. state_dict / load_state_dict round-trip the moments and the
    step count exactly, so a resumed run continues bit for bit.
    """

    def __init__(self, params, *, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise SmallMindError(f"AdamW betas must be in [0, 1), got {betas}")
        if not eps > 0 or weight_decay < 0:
            raise SmallMindError("AdamW needs eps > 0 and weight_decay >= 0")
        self.params = params
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.m = np.zeros_like(params.flat)
        self.v = np.zeros_like(params.flat)
        self.step_count = 0

    def step(self, grads, lr: float) -> None:
        """One update of params from grads (a Params of the same model) at learning rate lr."""
        if grads.flat.shape != self.params.flat.shape:
            raise SmallMindError("gradients do not match the optimizer's parameters")
        self.step_count += 1
        d = self.params.decay_size
        p, g = self.params.flat, grads.flat
        with scope("optimizer"):
            kernels.adamw_step(p[:d], g[:d], self.m[:d], self.v[:d], lr, self.beta1, self.beta2, self.eps,
                               self.weight_decay, self.step_count)
            kernels.adamw_step(p[d:], g[d:], self.m[d:], self.v[d:], lr, self.beta1, self.beta2, self.eps,
                               0.0, self.step_count)

    def state_dict(self) -> dict:
        return {"m": self.m.copy(), "v": self.v.copy(), "step": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        missing = {"m", "v", "step"} - set(state)
        if missing:
            raise CheckpointError(f"optimizer state is missing {sorted(missing)}")
        for key in ("m", "v"):
            moment = np.asarray(state[key])
            if moment.shape != self.m.shape or moment.dtype != np.float32:
                raise CheckpointError(
                    f"optimizer state {key!r} has shape {moment.shape} {moment.dtype}, "
                    f"expected {self.m.shape} float32: it belongs to another model")
        step = state["step"]
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"optimizer state's step must be a non-negative integer, not {step!r}")
        self.m[...] = state["m"]
        self.v[...] = state["v"]
        self.step_count = int(step)
