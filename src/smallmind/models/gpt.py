"""The trainable GPT: config, presets and weights (inference forward below them).

Weights follow PyTorch's Linear layout, (out_features, in_features), so a linear layer is
`x @ w.T + b` and a decode step is a matrix-vector product over contiguous rows. All
parameters live in one contiguous float32 buffer with named views (llm.c style), ordered
so that the weight-decayed matrices form one leading segment: AdamW then runs as two
fused calls over the whole model.
"""

from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import SmallMindError


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 512
    context_length: int = 128
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    dropout: float = 0.0
    tied_head: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        checks = [
            (self.vocab_size >= 2, "vocab_size must be at least 2"),
            (self.context_length >= 1, "context_length must be at least 1"),
            (self.d_model >= 1 and self.n_heads >= 1, "d_model and n_heads must be positive"),
            (self.d_model % max(self.n_heads, 1) == 0, "d_model must be a multiple of n_heads"),
            (self.n_layers >= 1, "n_layers must be at least 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise SmallMindError(f"bad model config: {message}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SmallMindError(f"bad model config: unknown keys {sorted(unknown)}")
        return cls(**d)


PRESETS = {
    # the model the original profiling analysis measured (about 3.3M parameters)
    "seed": GPTConfig(vocab_size=512, context_length=128, d_model=256, n_layers=4, n_heads=8),
    # about 0.5M parameters, for tests
    "tiny": GPTConfig(vocab_size=512, context_length=64, d_model=128, n_layers=2, n_heads=4),
    # about 30M parameters
    "small": GPTConfig(vocab_size=8192, context_length=256, d_model=512, n_layers=8, n_heads=8),
}


def preset(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise SmallMindError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[name].to_dict(), **overrides})


def param_shapes(cfg: GPTConfig) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, decayed) for every parameter, decayed matrices first."""
    C, V = cfg.d_model, cfg.vocab_size
    matrices, others = [], []
    for i in range(cfg.n_layers):
        h = f"h.{i}."
        matrices += [
            (h + "attn.qkv.weight", (3 * C, C)),
            (h + "attn.proj.weight", (C, C)),
            (h + "mlp.up.weight", (4 * C, C)),
            (h + "mlp.down.weight", (C, 4 * C)),
        ]
        others += [
            (h + "ln_1.weight", (C,)), (h + "ln_1.bias", (C,)),
            (h + "attn.qkv.bias", (3 * C,)), (h + "attn.proj.bias", (C,)),
            (h + "ln_2.weight", (C,)), (h + "ln_2.bias", (C,)),
            (h + "mlp.up.bias", (4 * C,)), (h + "mlp.down.bias", (C,)),
        ]
    if not cfg.tied_head:
        matrices.append(("lm_head.weight", (V, C)))
    others += [
        ("wte", (V, C)),
        ("wpe", (cfg.context_length, C)),
        ("ln_f.weight", (C,)), ("ln_f.bias", (C,)),
    ]
    return [(n, s, True) for n, s in matrices] + [(n, s, False) for n, s in others]


class Params:
    """One contiguous float32 buffer `flat` with a named view per parameter.

    `decay_size` elements at the front of `flat` take weight decay; the rest do not.
    Gradients and optimizer moments use the same layout (Params.zeros_like).
    """

    def __init__(self, cfg: GPTConfig, flat: np.ndarray | None = None):
        shapes = param_shapes(cfg)
        total = sum(int(np.prod(s)) for _, s, _ in shapes)
        if flat is None:
            flat = np.zeros(total, dtype=np.float32)
        if flat.shape != (total,) or flat.dtype != np.float32:
            raise SmallMindError(f"parameter buffer must be float32 of {total} elements")
        self.cfg = cfg
        self.flat = flat
        self.views: dict[str, np.ndarray] = {}
        self.decay_size = 0
        offset = 0
        for name, shape, decayed in shapes:
            n = int(np.prod(shape))
            self.views[name] = flat[offset:offset + n].reshape(shape)
            offset += n
            if decayed:
                self.decay_size = offset

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def __iter__(self):
        return iter(self.views)

    def items(self):
        return self.views.items()

    @property
    def lm_head(self) -> np.ndarray:
        return self.views["wte"] if self.cfg.tied_head else self.views["lm_head.weight"]

    def zeros_like(self) -> "Params":
        return Params(self.cfg)

    @property
    def count(self) -> int:
        return self.flat.size


def init_params(cfg: GPTConfig, seed: int = 0) -> Params:
    """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layers)."""
    rng = np.random.default_rng(seed)
    p = Params(cfg)
    resid_std = 0.02 / np.sqrt(2 * cfg.n_layers)
    for name, view in p.items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            view[...] = 1.0
        elif view.ndim == 1:
            view[...] = 0.0
        elif name.endswith("attn.proj.weight") or name.endswith("mlp.down.weight"):
            view[...] = rng.normal(0.0, resid_std, view.shape)
        else:
            view[...] = rng.normal(0.0, 0.02, view.shape)
    return p
