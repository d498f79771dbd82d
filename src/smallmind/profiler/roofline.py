"""Analytical cost models (FLOPs and compulsory bytes of a scope's calls) and the roofline.

Inference, any network (NetworkCost): every product scope (matmul.*) is costed from the weights
the network's forward multiplies by, as net.products() names them: FLOPs = 2 x rows x weight
elements, bytes = the weights as stored (a QTensor's packed blocks, a float32 array's nbytes),
their biases where the network has them (the weight named like the product's, .bias for
.weight) and the float32 activations in and out, summed over the products a scope runs per
forward. The other scopes (norm, attention, kv_cache, embedding, activation, sampling) are
modelled from the config's sizes, the KV spec and the products' widths; where the config lacks a size a scope needs,
that scope is not modelled (None) rather than guessed.

Training, the GPT only (forward_cost, backward_cost, scope_cost): every cost from its config.

A call's work is given by a Workload:

  Workload(rows, pairs, kv_rows, head_rows)
    rows      tokens a call processes (1 in decode, P in a prefill of P, B*T in training)
    pairs     causal (query, key) pairs per head (decode at position p: p+1; a prefill of P or a
              training batch: the triangle sum)
    kv_rows   key/value rows read by attention (the context held in the KV cache or the batch)
    head_rows rows sent through the LM head (the last position in inference, all in training)

Every cost is linear in these fields, so the cost of a decode averaged over its positions is the
cost of the averaged workload. Bytes count each weight, input and output touched once (float32
activations; intermediates such as attention scores are not counted). A backward matmul costs
two forward ones (dX and dW).

Roofline: attainable time = max(flops / peak_gflops, bytes / peak_gbps); a scope's roof_fraction
is attainable / measured time (equal to achieved GFLOPS / min(peak, intensity * peak_gbps)).
"""

from dataclasses import dataclass

import numpy as np

from ..models.gpt import GPTConfig, param_shapes

F32 = 4


@dataclass(frozen=True)
class Workload:
    rows: float
    pairs: float
    kv_rows: float
    head_rows: float


def decode_workload(prompt_tokens: int, new_tokens: int) -> Workload:
    """A decode step averaged over positions prompt_tokens .. prompt_tokens + new_tokens - 1."""
    mean_context = prompt_tokens + (new_tokens + 1) / 2.0
    return Workload(rows=1, pairs=mean_context, kv_rows=mean_context, head_rows=1)


def prefill_workload(tokens: int) -> Workload:
    return Workload(rows=tokens, pairs=tokens * (tokens + 1) / 2.0, kv_rows=tokens, head_rows=1)


def train_workload(batch: int, seq: int) -> Workload:
    n = batch * seq
    return Workload(rows=n, pairs=batch * seq * (seq + 1) / 2.0, kv_rows=n, head_rows=n)


def _linear(n_in: int, n_out: int, rows: float, residual: bool = False, bias: bool = True) -> tuple[float, float]:
    # weights (n_out,n_in) (+ bias), input (rows,n_in), output (rows,n_out); a fused residual
    # add reads the output too
    flops = 2.0 * rows * n_in * n_out + (rows * n_out if residual else 0.0)
    moved = n_out * n_in + (n_out if bias else 0) + rows * n_in + rows * n_out * (2 if residual else 1)
    return flops, moved * F32


def _linear_backward(n_in: int, n_out: int, rows: float, bias: bool = True) -> tuple[float, float]:
    # dX = dY W, dW += dY^T X (, db += sum dY): reads W, dW, X, dY; writes dW, dX (, db)
    flops = 4.0 * rows * n_in * n_out + (rows * n_out if bias else 0.0)
    moved = 3 * n_out * n_in + (2 * n_out if bias else 0) + 2 * rows * n_in + rows * n_out
    return flops, moved * F32


def forward_cost(name: str, cfg: GPTConfig, w: Workload, under_attention: bool = False):
    """(flops, bytes) of one forward call of operation `name`, or None if the model has no cost for it."""
    C, V, H = cfg.d_model, cfg.vocab_size, cfg.n_heads
    D = cfg.head_dim
    n = w.rows
    if name == "embedding":
        return n * C, 3 * n * C * F32
    if name == "norm":
        return 8.0 * n * C, (2 * n * C + 2 * C) * F32
    if name == "matmul.qkv":
        return _linear(C, 3 * C, n)
    if name == "kv_cache":
        return 0.0, 4 * n * C * F32
    if name == "attention":
        flops = w.pairs * H * (4.0 * D + 5.0)
        return flops, (2 * n * C + 2 * w.kv_rows * C) * F32
    if name == "softmax":
        if under_attention:
            return 5.0 * w.pairs * H, 2 * w.pairs * H * F32
        return 5.0 * w.head_rows * V, 2 * w.head_rows * V * F32
    if name == "matmul.attn_out":
        return _linear(C, C, n, residual=True)
    if name == "matmul.mlp_up":
        return _linear(C, 4 * C, n)
    if name == "activation":
        return 10.0 * n * 4 * C, 2 * n * 4 * C * F32
    if name == "matmul.mlp_down":
        return _linear(4 * C, C, n, residual=True)
    if name == "matmul.lm_head":
        return _linear(C, V, w.head_rows, bias=False)  # the head has no bias
    if name == "sampling":
        return float(V), V * F32
    if name == "loss":
        return 5.0 * w.head_rows * V, 2 * w.head_rows * V * F32
    return None


def backward_cost(name: str, cfg: GPTConfig, w: Workload, under_attention: bool = False):
    """(flops, bytes) of one backward call of operation `name`, or None."""
    C, V = cfg.d_model, cfg.vocab_size
    n = w.rows
    linears = {"matmul.qkv": (C, 3 * C), "matmul.attn_out": (C, C), "matmul.mlp_up": (C, 4 * C),
               "matmul.mlp_down": (4 * C, C)}
    if name in linears:
        return _linear_backward(*linears[name], n)
    if name == "matmul.lm_head":
        return _linear_backward(C, V, w.head_rows, bias=False)
    if name == "embedding":
        return 2.0 * n * C, 4 * n * C * F32
    if name == "norm":
        return 12.0 * n * C, (4 * n * C + 4 * C) * F32
    if name == "activation":
        return 15.0 * n * 4 * C, 3 * n * 4 * C * F32
    if name == "attention":
        flops = 2.0 * forward_cost("attention", cfg, w)[0]
        return flops, 8 * n * C * F32
    if name == "softmax":
        fwd = forward_cost("softmax", cfg, w, under_attention)
        return 2.0 * fwd[0], 1.5 * fwd[1]
    if name == "loss":
        return forward_cost("loss", cfg, w)
    return None


def optimizer_cost(cfg: GPTConfig) -> tuple[float, float]:
    """(flops, bytes) of one optimizer step over every parameter, as the trainer takes it: the
    gradient-norm clip (reads g) and AdamW (reads p, g, m, v; writes p, m, v)."""
    count = sum(_prod(shape) for _, shape, _ in param_shapes(cfg))
    return 16.0 * count, 8 * count * F32


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def scope_cost(path: str, calls: int, cfg: GPTConfig, workloads: dict, train_steps: int = 0):
    """Total (flops, bytes) over all `calls` of the scope at `path`, or None if not modelled.

    `workloads` maps a phase ("prefill", "decode", "train") to the Workload of one call there.
    The phase is read from the path: backward beats prefill/decode beats forward, so an
    inference forward nested in decode is still a decode.
    """
    parts = path.split("/")
    name = parts[-1]
    if name == "optimizer":
        if not train_steps:
            return None
        flops, moved = optimizer_cost(cfg)
        return flops * train_steps, moved * train_steps
    under_attention = "attention" in parts[:-1]
    if "backward" in parts and "train" in workloads:
        cost = backward_cost(name, cfg, workloads["train"], under_attention)
    elif "prefill" in parts and "prefill" in workloads:
        cost = forward_cost(name, cfg, workloads["prefill"], under_attention)
    elif "decode" in parts and "decode" in workloads:
        cost = forward_cost(name, cfg, workloads["decode"], under_attention)
    elif "forward" in parts and "train" in workloads:
        cost = forward_cost(name, cfg, workloads["train"], under_attention)
    else:
        return None
    if cost is None:
        return None
    return cost[0] * calls, cost[1] * calls


def roof_fraction(flops: float, moved: float, seconds: float, peaks: dict) -> float:
    """Attainable time on the roofline over the measured time (1.0 = at the roof)."""
    if seconds <= 0:
        return 0.0
    attainable = max(flops / (peaks["gflops"] * 1e9), moved / (peaks["gbps"] * 1e9))
    return attainable / seconds


# ---- inference, any network -------------------------------------------------------------------

# The GPT's forward adds these products into the residual stream inside the kernel call
# (kernels.linear(..., accumulate=True)), so they read their output as well as write it.
_GPT_RESIDUAL_PRODUCTS = frozenset({"matmul.attn_out", "matmul.mlp_down"})


@dataclass(frozen=True)
class Product:
    """One weight matrix a forward multiplies by, under profiler scope `scope`."""

    scope: str
    n_out: int          # rows of the weight: output features
    n_in: int           # columns: input features
    weight_type: str    # a QTensor's block format, or F32 / F16 for a plain array
    weight_bytes: int   # as stored
    bias_bytes: int     # 0 where the product has no bias


def weight_type(tensor) -> str:
    """A QTensor's block format, or the GGML-style name of a plain array's dtype (F32, F16)."""
    qtype = getattr(tensor, "qtype", None)
    if qtype is not None:
        return qtype
    return {"float32": "F32", "float16": "F16", "float64": "F64"}.get(str(tensor.dtype), str(tensor.dtype))


def network_products(net) -> list[Product]:
    """Every product of one forward of `net` (models/__init__.py: net.products()), with its bias:
    the weight that net.weights() names like the product's weight, with .bias for .weight."""
    weights = list(net.weights())
    names = {id(t): name for name, t in weights}
    by_name = dict(weights)
    out = []
    for scope_name, w in net.products():
        name = names.get(id(w), "")
        bias = by_name.get(name[:-len("weight")] + "bias") if name.endswith("weight") else None
        n_out, n_in = (int(n) for n in w.shape)
        out.append(Product(scope_name, n_out, n_in, weight_type(w), int(w.nbytes),
                           0 if bias is None else int(bias.nbytes)))
    return out


class NetworkCost:
    """The inference cost model of one network: products from net.products(), the other scopes
    from its config and KV spec."""

    def __init__(self, net):
        cfg = net.config
        self.products = network_products(net)
        self.scopes = sorted({p.scope for p in self.products})
        self.d_model = getattr(cfg, "d_model", None)
        self.vocab_size = getattr(cfg, "vocab_size", None)
        self.n_heads = getattr(cfg, "n_heads", None)
        _, self.n_kv_heads, self.head_dim = net.kv_spec
        self.kv_bytes = np.dtype(getattr(net, "kv_dtype", np.float32)).itemsize  # per cached K or V value
        is_gpt = isinstance(cfg, GPTConfig)
        # the GPT's embedding adds a position row; other families' tables (quantized, with or
        # without positions) are not described by their configs
        self.gpt_config = cfg if is_gpt else None
        self.residual = _GPT_RESIDUAL_PRODUCTS if is_gpt else frozenset()

    def weight_bytes(self, scope_name: str | None = None) -> int:
        """Bytes of weights (and biases) one forward reads, in one product scope or in all."""
        return sum(p.weight_bytes + p.bias_bytes for p in self.products
                   if scope_name is None or p.scope == scope_name)

    def product_cost(self, scope_name: str, w: Workload) -> tuple[float, float] | None:
        """(flops, bytes) of every product of scope `scope_name` in one forward, or None."""
        mine = [p for p in self.products if p.scope == scope_name]
        if not mine:
            return None
        rows = w.head_rows if scope_name == "matmul.lm_head" else w.rows
        reads_out = scope_name in self.residual
        flops = moved = 0.0
        for p in mine:
            flops += 2.0 * rows * p.n_out * p.n_in + (rows * p.n_out if reads_out else 0.0)
            moved += p.weight_bytes + p.bias_bytes + (rows * p.n_in + rows * p.n_out * (2 if reads_out else 1)) * F32
        return flops, moved

    def activation_cost(self, w: Workload) -> tuple[float, float] | None:
        """(flops, bytes) of the MLP activations of one forward: they read what the mlp_up
        products write (gate and up, or up alone) and write what mlp_down reads."""
        up = [p for p in self.products if p.scope == "matmul.mlp_up"]
        down = [p for p in self.products if p.scope == "matmul.mlp_down"]
        if not up or not down:
            return None
        hidden = sum(p.n_in for p in down)
        return 10.0 * w.rows * hidden, w.rows * (sum(p.n_out for p in up) + hidden) * F32

    def call_cost(self, name: str, w: Workload) -> tuple[float, float] | None:
        """(flops, bytes) of one call of a non-product scope, or None where it is not modelled."""
        C, H, Hkv, D = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        n = w.rows
        if name == "embedding":
            return None if self.gpt_config is None else forward_cost(name, self.gpt_config, w)
        if name == "norm" and C:
            return 8.0 * n * C, (2 * n * C + 2 * C) * F32
        if name == "kv_cache":
            return 0.0, 2 * n * Hkv * D * (F32 + self.kv_bytes)  # read k, v; write them cached
        if name == "attention" and H:
            flops = w.pairs * H * (4.0 * D + 5.0)
            return flops, 2 * n * H * D * F32 + 2 * w.kv_rows * Hkv * D * self.kv_bytes
        return None

    def scope_cost(self, path: str, calls: int, forwards: int, workloads: dict):
        """Total (flops, bytes) over all `calls` of the scope at `path`, made in `forwards`
        forwards of its phase (prefill or decode, read from the path), or None if not modelled.
        Sampling, which follows a forward outside it, reads the vocabulary's logits once a call."""
        parts = path.split("/")
        name = parts[-1]
        if name == "sampling":
            return (float(self.vocab_size) * calls, self.vocab_size * F32 * calls) if self.vocab_size else None
        phase = "prefill" if "prefill" in parts else "decode" if "decode" in parts else None
        if phase is None or phase not in workloads:
            return None
        w = workloads[phase]
        if name in self.scopes or name == "activation":
            cost = self.product_cost(name, w) if name in self.scopes else self.activation_cost(w)
            count = forwards
        else:
            cost = self.call_cost(name, w)
            count = calls
        if cost is None:
            return None
        return cost[0] * count, cost[1] * count


def bandwidth_fractions(gbps: float, peaks: dict) -> dict:
    """An achieved GB/s against the measured DRAM copy bandwidth and the in-cache copy bandwidth."""
    return {"bw_fraction": gbps / peaks["gbps"], "cache_bw_fraction": gbps / peaks["cache_gbps"]}
