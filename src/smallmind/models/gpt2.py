"""GPT-2 from GGUF (general.architecture gpt2), as llama.cpp's gpt2 builder runs it.

Learned position embeddings added to the token embeddings, pre-norm LayerNorm blocks with
biases everywhere, one fused QKV matrix ([q; k; v] rows), a GELU (tanh) MLP, and a head tied
to the token embedding unless the file has output.weight.
"""

from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..errors import ContextLengthError, SmallMindError
from ..kernels.qtensor import QTensor
from ..scope import scope
from .gguf_family import WeightReader, check_config, check_kv_cache, kv_dtype_for


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    context_length: int
    n_layers: int
    d_model: int
    n_heads: int
    ffn_dim: int
    norm_eps: float

    def __post_init__(self):
        check_config("gpt2", [
            (self.vocab_size >= 1 and self.context_length >= 1 and self.n_layers >= 1 and self.d_model >= 1
             and self.ffn_dim >= 1 and self.n_heads >= 1, "sizes must be positive"),
            (self.d_model % self.n_heads == 0,
             f"embedding_length {self.d_model} is not a multiple of head_count {self.n_heads}"),
            (self.norm_eps > 0, "attention.layer_norm_epsilon must be positive"),
        ])

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_gguf(cls, f) -> "GPT2Config":
        p = "gpt2."
        n_heads = f.get_int(p + "attention.head_count", min=1)
        check_config("gpt2", [(f.get_int(p + "attention.head_count_kv", n_heads) == n_heads,
                               "attention.head_count_kv differs from head_count")])
        return cls(
            vocab_size=f.tensor_info("token_embd.weight").shape[0],
            context_length=f.get_int(p + "context_length", min=1),
            n_layers=f.get_int(p + "block_count", min=1, max=len(f.tensor_infos)),
            d_model=f.get_int(p + "embedding_length", min=1),
            n_heads=n_heads,
            ffn_dim=f.get_int(p + "feed_forward_length", min=1),
            norm_eps=f.get_float(p + "attention.layer_norm_epsilon"),
        )


@dataclass(frozen=True)
class Layer:
    attn_norm_w: np.ndarray
    attn_norm_b: np.ndarray
    w_qkv: object            # (3C, C) float32 array or QTensor, like every matrix below
    b_qkv: np.ndarray
    wo: object               # (C, C)
    bo: np.ndarray
    ffn_norm_w: np.ndarray
    ffn_norm_b: np.ndarray
    w_up: object             # (F, C)
    b_up: np.ndarray
    w_down: object           # (C, F)
    b_down: np.ndarray


class StepViews:
    """The workspace's buffers cut to rows start..start+T-1; q, k, v are strided head views
    into the fused qkv rows. The decode set (T = 1) is made once, prefill makes one per call."""

    __slots__ = ("T", "x", "xn", "qkv", "q", "k", "v", "att", "att_heads", "h", "hg", "logits", "tail")

    def __init__(self, ws: "Workspace", T: int, start: int = 0):
        # buffers (max_tokens, ...) -> views (T, ...); q, k, v (T,H,D)
        H, D = ws.config.n_heads, ws.config.head_dim
        rows = slice(start, start + T)
        self.T = T
        self.x, self.xn, self.qkv = ws.x[rows], ws.xn[rows], ws.qkv[rows]
        heads = self.qkv.reshape(T, 3, H, D)
        self.q, self.k, self.v = heads[:, 0], heads[:, 1], heads[:, 2]
        self.att = ws.att[rows]
        self.att_heads = self.att.reshape(T, H, D)
        self.h, self.hg = ws.h[rows], ws.hg[rows]
        self.logits = ws.logits[rows]
        self.tail = self if T == 1 else StepViews(ws, 1, start + T - 1)


class Workspace:
    """Every activation buffer of a forward of up to `max_tokens` tokens."""

    def __init__(self, config: GPT2Config, max_tokens: int):
        C, F, V, T = config.d_model, config.ffn_dim, config.vocab_size, max_tokens
        f32 = np.float32
        self.config = config
        self.max_tokens = max_tokens
        self.x = np.zeros((T, C), f32)          # the residual stream
        self.xn = np.zeros((T, C), f32)         # a LayerNorm's output feeding a linear
        self.qkv = np.zeros((T, 3 * C), f32)
        self.att = np.zeros((T, C), f32)
        self.h = np.zeros((T, F), f32)          # MLP hidden before GELU
        self.hg = np.zeros((T, F), f32)         # after GELU
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


class GPT2:
    """A GPT-2 network over weights used in place from a GGUF file."""

    def __init__(self, config: GPT2Config, layers, token_embd, position_embd, output_norm_w, output_norm_b,
                 output, weights):
        self.config = config
        self.kv_spec = (config.n_layers, config.n_heads, config.head_dim)
        self.kv_dtype = kv_dtype_for(weights)  # half, as llama.cpp, unless the file is all float32
        self.layers = tuple(layers)
        self.token_embd = token_embd
        self.position_embd = position_embd
        self.output_norm_w, self.output_norm_b = output_norm_w, output_norm_b
        self.output = output
        self.scale = 1.0 / float(np.sqrt(config.head_dim))
        self._weights = weights

    def weights(self):
        return list(self._weights)

    def products(self):
        for layer in self.layers:
            yield "matmul.qkv", layer.w_qkv
            yield "matmul.attn_out", layer.wo
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
        if T == 1:
            act = ws.step
        elif 1 < T <= ws.max_tokens:
            act = StepViews(ws, T)
        else:
            raise ContextLengthError(f"a forward takes 1..{ws.max_tokens} tokens with this workspace, not {T}")
        if ws.config is not self.config:
            raise SmallMindError("this workspace was made for another model")
        if ws.kv is not kv:
            check_kv_cache(kv, self.kv_spec)
            ws.bind(kv, self.layers)
        if not 0 <= pos0 <= kv.length or pos0 + T > min(kv.capacity, self.config.context_length):
            raise ContextLengthError(f"positions {pos0}..{pos0 + T - 1} do not follow the {kv.length} cached "
                                     f"positions within the cache's {kv.capacity} and the position table's "
                                     f"{self.config.context_length}")
        eps, scale = self.config.norm_eps, self.scale
        with scope("decode" if T == 1 else "prefill"):
            with scope("embedding"):
                kernels.embedding(tokens, self.token_embd, self.position_embd, pos0, act.x)
            for layer, k_cache, v_cache in ws.layers:
                with scope("norm"):
                    kernels.layer_norm(act.x, layer.attn_norm_w, layer.attn_norm_b, act.xn, eps)
                with scope("matmul.qkv"):
                    kernels.linear(act.xn, layer.w_qkv, layer.b_qkv, act.qkv)
                with scope("kv_cache"):
                    kernels.kv_cache_store(act.k, act.v, k_cache, v_cache, pos0)
                with scope("attention"):
                    kernels.attention(act.q, k_cache, v_cache, pos0, act.att_heads, scale)
                with scope("matmul.attn_out"):
                    kernels.linear(act.att, layer.wo, layer.bo, act.x, accumulate=True)  # x += attn(x)
                with scope("norm"):
                    kernels.layer_norm(act.x, layer.ffn_norm_w, layer.ffn_norm_b, act.xn, eps)
                with scope("matmul.mlp_up"):
                    kernels.linear(act.xn, layer.w_up, layer.b_up, act.h)
                with scope("activation"):
                    kernels.gelu(act.h, act.hg)
                with scope("matmul.mlp_down"):
                    kernels.linear(act.hg, layer.w_down, layer.b_down, act.x, accumulate=True)  # x += mlp(x)
            kv.length = pos0 + T
            if not logits:
                return None
            out = act if all_logits else act.tail  # only the rows whose logits are wanted
            with scope("norm"):
                kernels.layer_norm(out.x, self.output_norm_w, self.output_norm_b, out.xn, eps)
            with scope("matmul.lm_head"):
                kernels.linear(out.xn, self.output, None, out.logits if all_logits else ws.logits_row)
            return out.logits if all_logits else ws.logits_last


def from_gguf(f) -> GPT2:
    """The network stored in GGUFFile `f` (general.architecture gpt2)."""
    cfg = GPT2Config.from_gguf(f)
    C, F, V, P = cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.context_length
    r = WeightReader(f)
    token_embd = r.read("token_embd.weight", (V, C))
    position_embd = r.read("position_embd.weight", (P, C))
    output_norm_w = r.vector("output_norm.weight", C)
    output_norm_b = r.vector("output_norm.bias", C)
    output = r.read("output.weight", (V, C), optional=True)
    layers = []
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        layers.append(Layer(
            attn_norm_w=r.vector(b + "attn_norm.weight", C), attn_norm_b=r.vector(b + "attn_norm.bias", C),
            w_qkv=r.read(b + "attn_qkv.weight", (3 * C, C)), b_qkv=r.vector(b + "attn_qkv.bias", 3 * C),
            wo=r.read(b + "attn_output.weight", (C, C)), bo=r.vector(b + "attn_output.bias", C),
            ffn_norm_w=r.vector(b + "ffn_norm.weight", C), ffn_norm_b=r.vector(b + "ffn_norm.bias", C),
            w_up=r.read(b + "ffn_up.weight", (F, C)), b_up=r.vector(b + "ffn_up.bias", F),
            w_down=r.read(b + "ffn_down.weight", (C, F)), b_down=r.vector(b + "ffn_down.bias", C),
        ))
    weights = r.finish()
    if isinstance(position_embd, QTensor):
        # the embedding kernel adds positions as float32: a 16-bit or quantized table (a few MB
        # as float32) is expanded once here rather than per token
        position_embd = kernels.dequantize(position_embd, np.empty(position_embd.shape, np.float32))
    return GPT2(cfg, layers, token_embd, position_embd, output_norm_w, output_norm_b,
                token_embd if output is None else output, weights)
