"""The trainable GPT: config, presets and weights (inference forward below them).

Weights follow PyTorch's Linear layout, (out_features, in_features), so a linear layer is
`x @ w.T + b` and a decode step is a matrix-vector product over contiguous rows. All
parameters live in one contiguous float32 buffer with named views (llm.c style), ordered
so that the weight-decayed matrices form one leading segment: AdamW then runs as two
fused calls over the whole model.
"""

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import kernels
from ..errors import ContextLengthError, SmallMindError
from ..memory import require
from ..scope import scope
from .batch import cache_arrays, check_step


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
        # types first: a config comes from JSON files and API calls as well as from presets
        for name, (low, high) in INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise SmallMindError(f"bad model config: {name} must be an integer in [{low}, {high}], got {value!r}")
            object.__setattr__(self, name, int(value))
        for name, ok, rule in (("dropout", lambda x: 0.0 <= x < 1.0, "in [0, 1)"),
                               ("layer_norm_eps", lambda x: 0.0 < x <= 1.0, "in (0, 1]")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not math.isfinite(value) or not ok(value):
                raise SmallMindError(f"bad model config: {name} must be a number {rule}, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.tied_head, (bool, np.bool_)):
            raise SmallMindError(f"bad model config: tied_head must be true or false, got {self.tied_head!r}")
        object.__setattr__(self, "tied_head", bool(self.tied_head))
        if self.d_model % self.n_heads:
            raise SmallMindError("bad model config: d_model must be a multiple of n_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        if not isinstance(d, dict):
            raise SmallMindError(f"bad model config: expected an object of settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SmallMindError(f"bad model config: unknown keys {sorted(unknown)}")
        return cls(**d)


# The integer settings' bounds: far beyond any model this GPT can train or run, small enough
# that a crafted config cannot make a loader loop or allocate without end.
INT_RANGES = {
    "vocab_size": (2, 1 << 24),
    "context_length": (1, 1 << 20),
    "d_model": (1, 1 << 16),
    "n_layers": (1, 1 << 10),
    "n_heads": (1, 1 << 12),
}

PRESETS = {
    # the model the original profiling analysis measured (about 3.3M parameters)
    "seed": GPTConfig(vocab_size=512, context_length=128, d_model=256, n_layers=4, n_heads=8),
    # about 0.5M parameters, for tests
    "tiny": GPTConfig(vocab_size=512, context_length=64, d_model=128, n_layers=2, n_heads=4),
    # about 30M parameters
    "small": GPTConfig(vocab_size=8192, context_length=256, d_model=512, n_layers=8, n_heads=8),
    # about 98M parameters (GPT-2 small's body with a 16K vocabulary)
    "base": GPTConfig(vocab_size=16384, context_length=256, d_model=768, n_layers=12, n_heads=12),
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
        total = sum(math.prod(s) for _, s, _ in shapes)
        if flat is None:
            require(4 * total, f"a model of {total:,} parameters")
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


# ----------------------------------------------------------------------------------------------
# Inference: a workspace made once per session (llama2.c's RunState) and one forward that does
# both prefill (T = prompt length) and decode (T = 1) over it.


class StepViews:
    """The workspace's buffers cut to rows start..start+T-1. Slicing makes Python objects, so
    the decode step's set (T = 1) is made once; prefill makes a set per call (once per prompt).
    `tail` is the set for the last row alone."""

    __slots__ = ("T", "x", "xn", "qkv", "q", "k", "v", "att", "att_heads", "h", "hg", "xf",
                 "logits", "tail")

    def __init__(self, ws: "Workspace", T: int, start: int = 0):
        # buffers (max_tokens, ...) -> views (T, ...); q, k, v (T,H,D) are strided views into qkv
        H, D = ws.cfg.n_heads, ws.cfg.head_dim
        rows = slice(start, start + T)
        self.T = T
        self.x = ws.x[rows]
        self.xn = ws.xn[rows]
        self.qkv = ws.qkv[rows]
        heads = self.qkv.reshape(T, 3, H, D)
        self.q, self.k, self.v = heads[:, 0], heads[:, 1], heads[:, 2]
        self.att = ws.att[rows]
        self.att_heads = self.att.reshape(T, H, D)
        self.h = ws.h[rows]
        self.hg = ws.hg[rows]
        self.xf = ws.xf[rows]
        self.logits = ws.logits[rows]
        self.tail = self if T == 1 else StepViews(ws, 1, start + T - 1)


class Workspace:
    """Every activation and scratch buffer of a forward of up to `max_tokens` tokens: made once
    per generation session, so that a decode step allocates nothing. The KV cache is not here:
    the runtime owns it and hands it to every forward. forward() binds the weights on first use
    with a given Params."""

    def __init__(self, cfg: GPTConfig, max_tokens: int):
        if not 1 <= max_tokens <= cfg.context_length:
            raise ContextLengthError(
                f"a workspace holds 1..{cfg.context_length} tokens (the context length), not {max_tokens}")
        C, V, T = cfg.d_model, cfg.vocab_size, max_tokens
        f32 = np.float32
        self.cfg = cfg
        self.max_tokens = max_tokens
        self.x = np.zeros((T, C), f32)           # the residual stream
        self.xn = np.zeros((T, C), f32)          # layer-norm output feeding a linear
        self.qkv = np.zeros((T, 3 * C), f32)
        self.att = np.zeros((T, C), f32)         # attention output, heads side by side
        self.h = np.zeros((T, 4 * C), f32)       # MLP hidden before GELU
        self.hg = np.zeros((T, 4 * C), f32)      # MLP hidden after GELU
        self.xf = np.zeros((T, C), f32)          # ln_f output
        self.logits = np.zeros((T, V), f32)
        self.logits_last = self.logits[0]        # (V,): where last-position logits are returned
        self.logits_row = self.logits[0:1]       # (1,V): the same memory, as the LM head's out
        self.step = StepViews(self, 1)
        self.scale = 1.0 / float(np.sqrt(cfg.head_dim))
        self.params = None
        self.layers = ()
        self.batch = None   # BatchViews, made by the first batched forward

    def bind(self, params: Params) -> None:
        """Look up every weight view once (name formatting per step would allocate)."""
        if params.cfg != self.cfg:
            raise SmallMindError("these weights belong to a different model config than the workspace")
        self.layers = tuple(
            tuple(params[f"h.{i}.{n}"] for n in (
                "ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias",
                "attn.proj.weight", "attn.proj.bias", "ln_2.weight", "ln_2.bias",
                "mlp.up.weight", "mlp.up.bias", "mlp.down.weight", "mlp.down.bias"))
            for i in range(self.cfg.n_layers))
        self.wte, self.wpe = params["wte"], params["wpe"]
        self.ln_f_w, self.ln_f_b = params["ln_f.weight"], params["ln_f.bias"]
        self.lm_head = params.lm_head
        self.params = params


def forward(params: Params, ws: Workspace, kv, tokens: np.ndarray, pos0: int, *, all_logits: bool = False,
            logits: bool = True):
    # tokens (T,) int32 at positions pos0..pos0+T-1 -> logits (V,) of the last one, or (T,V) if all_logits,
    # or None without logits (then the last block only stores its keys and values)
    """One forward over the workspace: prefill when T > 1, a decode step when T == 1.

    Keys and values of the T positions go into `kv` (a runtime.kv_cache.KVCache of this model's
    shape), and the tokens attend to every earlier position held there, so pos0 must not exceed
    the positions already cached. The logits returned are a view into the workspace,
    overwritten by the next forward.
    """
    T = len(tokens)  # not tokens.shape[0]: .shape builds a tuple each time
    if T == 1:
        act = ws.step
    elif 1 < T <= ws.max_tokens:
        act = StepViews(ws, T)
    else:
        raise ContextLengthError(f"a forward takes 1..{ws.max_tokens} tokens with this workspace, not {T}")
    if not 0 <= pos0 <= kv.length or pos0 + T > kv.capacity:
        raise ContextLengthError(
            f"positions {pos0}..{pos0 + T - 1} do not follow the {kv.length} cached positions "
            f"within the context length {kv.capacity} of the KV cache")
    if ws.params is not params:
        ws.bind(params)
    eps, scale = ws.cfg.layer_norm_eps, ws.scale
    # The last block's output feeds nothing but the logits: when only the last position's are
    # wanted, that block computes its keys and values for every position (the cache needs them)
    # and the rest for the last position alone.
    last_block_rows = act if all_logits else act.tail
    last_k_cache = kv.k_layers[-1]
    with scope("decode" if T == 1 else "prefill"):
        with scope("embedding"):
            kernels.embedding(tokens, ws.wte, ws.wpe, pos0, act.x)
        for (ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, up_w, up_b, down_w, down_b), \
                k_cache, v_cache in zip(ws.layers, kv.k_layers, kv.v_layers):
            out = last_block_rows if k_cache is last_k_cache else act  # the rows whose output is used
            out_pos0 = pos0 + T - out.T
            with scope("norm"):
                kernels.layer_norm(act.x, ln1_w, ln1_b, act.xn, eps)
            with scope("matmul.qkv"):
                kernels.linear(act.xn, qkv_w, qkv_b, act.qkv)
            with scope("kv_cache"):
                kernels.kv_cache_store(act.k, act.v, k_cache, v_cache, pos0)
            if not logits and k_cache is last_k_cache:
                break   # the last block's output feeds only the logits
            with scope("attention"):
                kernels.attention(out.q, k_cache, v_cache, out_pos0, out.att_heads, scale)
            with scope("matmul.attn_out"):
                kernels.linear(out.att, proj_w, proj_b, out.x, accumulate=True)  # x += proj(att)
            with scope("norm"):
                kernels.layer_norm(out.x, ln2_w, ln2_b, out.xn, eps)
            with scope("matmul.mlp_up"):
                kernels.linear(out.xn, up_w, up_b, out.h)
            with scope("activation"):
                kernels.gelu(out.h, out.hg)
            with scope("matmul.mlp_down"):
                kernels.linear(out.hg, down_w, down_b, out.x, accumulate=True)  # x += mlp(x)
        kv.length = pos0 + T
        if not logits:
            return None
        out = last_block_rows
        with scope("norm"):
            kernels.layer_norm(out.x, ws.ln_f_w, ws.ln_f_b, out.xf, eps)
        with scope("matmul.lm_head"):
            kernels.linear(out.xf, ws.lm_head, None, out.logits if all_logits else ws.logits_row)
        return out.logits if all_logits else ws.logits_last


class BatchViews:
    """A workspace's views for a batched decode step, made once on its first batched forward:
    `first[n]` is rows 0..n-1 (what every kernel of the step runs over), `tokens[n]` and
    `wpe_rows[n]` hold those rows' token ids and position embeddings."""

    def __init__(self, ws: Workspace):
        self.first = (None,) + tuple(StepViews(ws, n) for n in range(1, ws.max_tokens + 1))
        tokens = np.zeros(ws.max_tokens, np.int32)
        wpe_rows = np.zeros((ws.max_tokens, ws.cfg.d_model), np.float32)
        self.tokens = (None,) + tuple(tokens[:n] for n in range(1, ws.max_tokens + 1))
        self.wpe_rows = (None,) + tuple(wpe_rows[:n] for n in range(1, ws.max_tokens + 1))


def forward_batch(params: Params, ws: Workspace, kvs, tokens, positions):
    # tokens (B,) int, positions (B,) int, kvs B KVCaches -> logits (B,V), a view into ws
    """One decode step for B sequences at once: token b goes to position positions[b] of the
    sequence whose cache is kvs[b]. The linear layers run once over the B rows (the weights are
    read once for all of them); the KV store and attention run once a layer, each row against
    its own cache at its own position. Each row's result equals forward() of that token alone."""
    B, positions = check_step(ws, kvs, tokens, positions)
    if positions.max() >= ws.cfg.context_length:
        raise ContextLengthError(f"position {positions.max()} is beyond the context length {ws.cfg.context_length}")
    if ws.params is not params:
        ws.bind(params)
    if ws.batch is None:
        ws.batch = BatchViews(ws)
    views = ws.batch
    act, wpe_rows = views.first[B], views.wpe_rows[B]
    k_caches, v_caches = cache_arrays(kvs)
    eps, scale = ws.cfg.layer_norm_eps, ws.scale
    views.tokens[B][...] = tokens
    with scope("decode"):
        with scope("embedding"):
            # wte[token] + wpe[position], the one float sum embedding() makes of each row
            kernels.embedding(views.tokens[B], ws.wte, None, 0, act.x)
            np.take(ws.wpe, positions, axis=0, out=wpe_rows, mode="clip")  # checked above; "raise" would buffer
            np.add(act.x, wpe_rows, out=act.x)
        for layer, (ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, up_w, up_b, down_w, down_b) \
                in enumerate(ws.layers):
            with scope("norm"):
                kernels.layer_norm(act.x, ln1_w, ln1_b, act.xn, eps)
            with scope("matmul.qkv"):
                kernels.linear(act.xn, qkv_w, qkv_b, act.qkv)
            with scope("kv_cache"):
                kernels.kv_cache_store_rows(act.k, act.v, k_caches, v_caches, layer, positions)
            with scope("attention"):
                kernels.attention_rows(act.q, k_caches, v_caches, layer, positions, act.att_heads, scale)
            with scope("matmul.attn_out"):
                kernels.linear(act.att, proj_w, proj_b, act.x, accumulate=True)
            with scope("norm"):
                kernels.layer_norm(act.x, ln2_w, ln2_b, act.xn, eps)
            with scope("matmul.mlp_up"):
                kernels.linear(act.xn, up_w, up_b, act.h)
            with scope("activation"):
                kernels.gelu(act.h, act.hg)
            with scope("matmul.mlp_down"):
                kernels.linear(act.hg, down_w, down_b, act.x, accumulate=True)
        for kv, pos in zip(kvs, positions):
            kv.length = int(pos) + 1
        with scope("norm"):
            kernels.layer_norm(act.x, ws.ln_f_w, ws.ln_f_b, act.xf, eps)
        with scope("matmul.lm_head"):
            kernels.linear(act.xf, ws.lm_head, None, act.logits)
        return act.logits


class GPT:
    """The trainable GPT as a network of the runtime's contract (models/__init__.py)."""

    def __init__(self, params: Params):
        self.params = params
        self.config = params.cfg
        self.kv_spec = (params.cfg.n_layers, params.cfg.n_heads, params.cfg.head_dim)
        self.kv_dtype = np.float32  # the cache PyTorch's results are matched with

    def workspace(self, max_tokens: int) -> Workspace:
        return Workspace(self.config, max_tokens)

    def forward(self, ws: Workspace, kv, tokens: np.ndarray, pos0: int, all_logits: bool = False,
                logits: bool = True):
        # tokens (T,) int32 -> logits (V,) of the last position, or (T,V), or None without logits
        return forward(self.params, ws, kv, tokens, pos0, all_logits=all_logits, logits=logits)

    def forward_batch(self, ws: Workspace, kvs, tokens, positions):
        # tokens (B,) int, positions (B,) int, kvs B KVCaches -> logits (B,V)
        return forward_batch(self.params, ws, kvs, tokens, positions)

    def weights(self):
        return self.params.items()

    def products(self):
        for i in range(self.config.n_layers):
            h = f"h.{i}."
            yield "matmul.qkv", self.params[h + "attn.qkv.weight"]
            yield "matmul.attn_out", self.params[h + "attn.proj.weight"]
            yield "matmul.mlp_up", self.params[h + "mlp.up.weight"]
            yield "matmul.mlp_down", self.params[h + "mlp.down.weight"]
        yield "matmul.lm_head", self.params.lm_head
