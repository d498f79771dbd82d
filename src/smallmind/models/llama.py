"""The Llama family from GGUF: llama (SmolLM2, TinyLlama, Llama 3), qwen2 and qwen3.

The three share one recipe (pre-norm RMSNorm blocks, grouped-query attention with RoPE, a
SwiGLU MLP) and differ in three details, each a flag of the config or an optional weight:
  - RoPE pairing: llama rotates adjacent pairs (llama.cpp's NORM type; the converter permutes
    Q and K to match), qwen2 and qwen3 rotate the two halves of a head (NEOX).
  - qwen2 adds biases to Q, K and V (llama files may carry them too; they are used if present).
  - qwen3 RMS-normalises each head of Q and K before RoPE, and its head width (key_length)
    need not be d_model / n_heads.
Llama 3 stores its long-context RoPE scaling as per-frequency divisors (rope_freqs.weight).
"""

from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..errors import ContextLengthError, SmallMindError
from ..scope import scope
from .batch import batch_views, cache_arrays, check_step
from .gguf_family import WeightReader, check_config, check_forward, check_kv_cache, kv_dtype_for, step_views

ROPE_NEOX = {"llama": False, "qwen2": True, "qwen3": True}


@dataclass(frozen=True)
class LlamaConfig:
    arch: str
    vocab_size: int
    context_length: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float
    rope_neox: bool
    norm_eps: float
    attn_scale: float
    qk_norm: bool

    def __post_init__(self):
        check_config(self.arch, [
            (self.vocab_size >= 1 and self.context_length >= 1 and self.n_layers >= 1 and self.d_model >= 1
             and self.ffn_dim >= 1, "sizes must be positive"),
            (self.n_heads >= 1 and self.n_kv_heads >= 1, "head counts must be positive"),
            (self.n_heads % self.n_kv_heads == 0,
             f"head_count {self.n_heads} is not a multiple of head_count_kv {self.n_kv_heads}"),
            (self.head_dim >= 2 and self.head_dim % 2 == 0, f"head width {self.head_dim} must be even"),
            (self.rope_theta > 0, "rope.freq_base must be positive"),
            (self.norm_eps > 0, "layer_norm_rms_epsilon must be positive"),
        ])

    @classmethod
    def from_gguf(cls, f) -> "LlamaConfig":
        arch = f.architecture
        p = arch + "."
        d_model = f.get_int(p + "embedding_length", min=1)
        n_heads = f.get_int(p + "attention.head_count", min=1)
        head_dim = f.get_int(p + "attention.key_length", d_model // n_heads, min=1)
        check_config(arch, [
            (f.get_int(p + "attention.value_length", head_dim) == head_dim,
             "attention.value_length differs from attention.key_length"),
            (f.get_int(p + "rope.dimension_count", head_dim) == head_dim,
             "rope.dimension_count differs from the head width (partial RoPE is not supported)"),
        ])
        return cls(
            arch=arch,
            vocab_size=f.tensor_info("token_embd.weight").shape[0],
            context_length=f.get_int(p + "context_length", min=1),
            n_layers=f.get_int(p + "block_count", min=1, max=len(f.tensor_infos)),
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=f.get_int(p + "attention.head_count_kv", n_heads, min=1),
            head_dim=head_dim,
            ffn_dim=f.get_int(p + "feed_forward_length", min=1),
            rope_theta=f.get_float(p + "rope.freq_base", 10000.0),
            rope_neox=ROPE_NEOX[arch],
            norm_eps=f.get_float(p + "attention.layer_norm_rms_epsilon"),
            attn_scale=1.0 / float(np.sqrt(head_dim)),
            qk_norm=arch == "qwen3",
        )


@dataclass(frozen=True)
class Layer:
    attn_norm: np.ndarray
    wq: object   # (H*D, C) float32 array or QTensor, like every matrix below
    wk: object   # (Hkv*D, C)
    wv: object   # (Hkv*D, C)
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    q_norm: np.ndarray | None  # (D,) qwen3
    k_norm: np.ndarray | None
    wo: object   # (C, H*D)
    ffn_norm: np.ndarray
    w_gate: object  # (F, C)
    w_up: object    # (F, C)
    w_down: object  # (C, F)


class StepViews:
    """The workspace's buffers cut to rows start..start+T-1, with head views of q, k, v and
    the attention output. The decode set (T = 1) is made once; prefill makes one per call."""

    __slots__ = ("T", "x", "xn", "q", "k", "v", "q_heads", "k_heads", "v_heads", "q_rows", "k_rows",
                 "att", "att_heads", "gate", "up", "hidden", "logits", "tail")

    def __init__(self, ws: "Workspace", T: int, start: int = 0):
        # buffers (max_tokens, ...) -> views (T, ...); *_heads (T, heads, D); *_rows (T*heads, D)
        cfg = ws.config
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        rows = slice(start, start + T)
        self.T = T
        self.x, self.xn = ws.x[rows], ws.xn[rows]
        self.q, self.k, self.v = ws.q[rows], ws.k[rows], ws.v[rows]
        self.q_heads, self.k_heads = self.q.reshape(T, H, D), self.k.reshape(T, Hkv, D)
        self.v_heads = self.v.reshape(T, Hkv, D)
        self.q_rows, self.k_rows = self.q.reshape(T * H, D), self.k.reshape(T * Hkv, D)
        self.att = ws.att[rows]
        self.att_heads = self.att.reshape(T, H, D)
        self.gate, self.up, self.hidden = ws.gate[rows], ws.up[rows], ws.hidden[rows]
        self.logits = ws.logits[rows]
        self.tail = self if T == 1 else StepViews(ws, 1, start + T - 1)


class Workspace:
    """Every activation buffer of a forward of up to `max_tokens` tokens (llama2.c's RunState)."""

    def __init__(self, config: LlamaConfig, max_tokens: int):
        C, F, V, T = config.d_model, config.ffn_dim, config.vocab_size, max_tokens
        HD, KD = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        f32 = np.float32
        self.config = config
        self.max_tokens = max_tokens
        self.x = np.zeros((T, C), f32)          # the residual stream
        self.xn = np.zeros((T, C), f32)         # a norm's output feeding a linear
        self.q = np.zeros((T, HD), f32)
        self.k = np.zeros((T, KD), f32)
        self.v = np.zeros((T, KD), f32)
        self.att = np.zeros((T, HD), f32)       # attention output, heads side by side
        self.gate = np.zeros((T, F), f32)
        self.up = np.zeros((T, F), f32)
        self.hidden = np.zeros((T, F), f32)     # silu(gate) * up
        self.logits = np.zeros((T, V), f32)
        self.logits_row = self.logits[0:1]     # (1,V): where the last position's logits go
        self.logits_last = self.logits[0]      # (V,): the same memory, as returned
        self.step = StepViews(self, 1)
        self.kv = None
        self.layers = ()

    def bind(self, kv, layers) -> None:
        """Pair each layer's weights with its cache views once per KV cache (not per step)."""
        self.layers = tuple(zip(layers, kv.k_layers, kv.v_layers))
        self.kv = kv


class Llama:
    """A llama / qwen2 / qwen3 network over weights used in place from a GGUF file."""

    def __init__(self, config: LlamaConfig, layers, token_embd, output_norm, output, rope_freqs, weights):
        self.config = config
        self.kv_spec = (config.n_layers, config.n_kv_heads, config.head_dim)
        self.kv_dtype = kv_dtype_for(weights)  # half, as llama.cpp, unless the file is all float32
        self.layers = tuple(layers)
        self.token_embd = token_embd
        self.output_norm = output_norm
        self.output = output
        self.rope_freqs = rope_freqs
        self._weights = weights

    def weights(self):
        return list(self._weights)

    def products(self):
        for layer in self.layers:
            yield "matmul.qkv", layer.wq
            yield "matmul.qkv", layer.wk
            yield "matmul.qkv", layer.wv
            yield "matmul.attn_out", layer.wo
            yield "matmul.mlp_up", layer.w_gate
            yield "matmul.mlp_up", layer.w_up
            yield "matmul.mlp_down", layer.w_down
        yield "matmul.lm_head", self.output

    def workspace(self, max_tokens: int) -> Workspace:
        if not 1 <= max_tokens <= self.config.context_length:
            raise ContextLengthError(f"a workspace holds 1..{self.config.context_length} tokens "
                                     f"(the context length), not {max_tokens}")
        return Workspace(self.config, max_tokens)

    def forward(self, ws: Workspace, kv, tokens: np.ndarray, pos0: int, all_logits: bool = False,
                logits: bool = True):
        # tokens (T,) int32 at positions pos0..pos0+T-1 -> logits (V,) of the last one, or (T,V)
        T = len(tokens)
        act = step_views(ws, T, StepViews)
        check_forward(self, ws, kv, pos0, T)
        cfg = self.config
        eps, theta, neox, freqs, scale = cfg.norm_eps, cfg.rope_theta, cfg.rope_neox, self.rope_freqs, cfg.attn_scale
        with scope("decode" if T == 1 else "prefill"):
            with scope("embedding"):
                kernels.embedding(tokens, self.token_embd, None, 0, act.x)
            for layer, k_cache, v_cache in ws.layers:
                self._attention_inputs(act, layer)
                with scope("rope"):
                    kernels.rope(act.q_heads, pos0, theta, act.q_heads, neox, freqs)
                    kernels.rope(act.k_heads, pos0, theta, act.k_heads, neox, freqs)
                with scope("kv_cache"):
                    kernels.kv_cache_store(act.k_heads, act.v_heads, k_cache, v_cache, pos0)
                with scope("attention"):
                    kernels.attention(act.q_heads, k_cache, v_cache, pos0, act.att_heads, scale)
                self._attention_output_and_mlp(act, layer)
            kv.length = pos0 + T
            if not logits:
                return None
            out = act if all_logits else act.tail  # only the rows whose logits are wanted
            with scope("norm"):
                kernels.rms_norm(out.x, self.output_norm, out.xn, eps)
            with scope("matmul.lm_head"):
                kernels.linear(out.xn, self.output, None, out.logits if all_logits else ws.logits_row)
            return out.logits if all_logits else ws.logits_last


    def forward_batch(self, ws: Workspace, kvs, tokens: np.ndarray, positions):
        # tokens (B,) int32, token b at positions[b] of the sequence in kvs[b] -> (B,V) logits
        """One decode step of B sequences (models/batch.py): the products run once over the B
        rows, RoPE, the KV store and attention once a layer, each row at its own position in
        its own cache."""
        B, positions = check_step(ws, kvs, tokens, positions)
        if ws.config is not self.config:
            raise SmallMindError("this workspace was made for another model")
        for kv in kvs:
            check_kv_cache(kv, self.kv_spec)
        act = batch_views(ws, StepViews).first[B]
        k_caches, v_caches = cache_arrays(kvs)
        cfg = self.config
        eps, theta, neox, freqs, scale = cfg.norm_eps, cfg.rope_theta, cfg.rope_neox, self.rope_freqs, cfg.attn_scale
        with scope("decode"):
            with scope("embedding"):
                kernels.embedding(tokens, self.token_embd, None, 0, act.x)
            for i, layer in enumerate(self.layers):
                self._attention_inputs(act, layer)
                with scope("rope"):
                    kernels.rope_rows(act.q_heads, positions, theta, act.q_heads, neox, freqs)
                    kernels.rope_rows(act.k_heads, positions, theta, act.k_heads, neox, freqs)
                with scope("kv_cache"):
                    kernels.kv_cache_store_rows(act.k_heads, act.v_heads, k_caches, v_caches, i, positions)
                with scope("attention"):
                    kernels.attention_rows(act.q_heads, k_caches, v_caches, i, positions, act.att_heads, scale)
                self._attention_output_and_mlp(act, layer)
            for kv, pos in zip(kvs, positions):
                kv.length = int(pos) + 1
            with scope("norm"):
                kernels.rms_norm(act.x, self.output_norm, act.xn, eps)
            with scope("matmul.lm_head"):
                kernels.linear(act.xn, self.output, None, act.logits)
            return act.logits

    def _attention_inputs(self, act, layer) -> None:
        # act's rows: x -> q, k, v (heads normed for qwen3), before RoPE
        eps = self.config.norm_eps
        with scope("norm"):
            kernels.rms_norm(act.x, layer.attn_norm, act.xn, eps)
        with scope("matmul.qkv"):
            kernels.linear(act.xn, layer.wq, layer.bq, act.q)
            kernels.linear(act.xn, layer.wk, layer.bk, act.k)
            kernels.linear(act.xn, layer.wv, layer.bv, act.v)
        if self.config.qk_norm:
            with scope("norm"):
                kernels.rms_norm(act.q_rows, layer.q_norm, act.q_rows, eps)
                kernels.rms_norm(act.k_rows, layer.k_norm, act.k_rows, eps)

    def _attention_output_and_mlp(self, act, layer) -> None:
        # act's rows: x += wo(att); x += mlp(norm(x))
        with scope("matmul.attn_out"):
            kernels.linear(act.att, layer.wo, None, act.x, accumulate=True)
        with scope("norm"):
            kernels.rms_norm(act.x, layer.ffn_norm, act.xn, self.config.norm_eps)
        with scope("matmul.mlp_up"):
            kernels.linear(act.xn, layer.w_gate, None, act.gate)
            kernels.linear(act.xn, layer.w_up, None, act.up)
        with scope("activation"):
            kernels.swiglu(act.gate, act.up, act.hidden)
        with scope("matmul.mlp_down"):
            kernels.linear(act.hidden, layer.w_down, None, act.x, accumulate=True)


def from_gguf(f) -> Llama:
    """The network stored in GGUFFile `f` (general.architecture llama, qwen2 or qwen3)."""
    cfg = LlamaConfig.from_gguf(f)
    C, F, V, D = cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.head_dim
    HD, KD = cfg.n_heads * D, cfg.n_kv_heads * D
    r = WeightReader(f)
    token_embd = r.read("token_embd.weight", (V, C))
    output_norm = r.vector("output_norm.weight", C)
    output = r.read("output.weight", (V, C), optional=True)
    rope_freqs = r.vector("rope_freqs.weight", D // 2, optional=True)
    bias_required = cfg.arch == "qwen2"
    layers = []
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        layers.append(Layer(
            attn_norm=r.vector(b + "attn_norm.weight", C),
            wq=r.read(b + "attn_q.weight", (HD, C)),
            wk=r.read(b + "attn_k.weight", (KD, C)),
            wv=r.read(b + "attn_v.weight", (KD, C)),
            bq=r.vector(b + "attn_q.bias", HD, optional=not bias_required),
            bk=r.vector(b + "attn_k.bias", KD, optional=not bias_required),
            bv=r.vector(b + "attn_v.bias", KD, optional=not bias_required),
            q_norm=r.vector(b + "attn_q_norm.weight", D, optional=not cfg.qk_norm),
            k_norm=r.vector(b + "attn_k_norm.weight", D, optional=not cfg.qk_norm),
            wo=r.read(b + "attn_output.weight", (C, HD)),
            ffn_norm=r.vector(b + "ffn_norm.weight", C),
            w_gate=r.read(b + "ffn_gate.weight", (F, C)),
            w_up=r.read(b + "ffn_up.weight", (F, C)),
            w_down=r.read(b + "ffn_down.weight", (C, F)),
        ))
    weights = r.finish()
    # no output.weight: the head is tied to the token embedding
    return Llama(cfg, layers, token_embd, output_norm, token_embd if output is None else output,
                 rope_freqs, weights)
