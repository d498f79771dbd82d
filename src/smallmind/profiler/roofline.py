"""An analytical cost model of the GPT (models/gpt.py) and the roofline built on it.

For every scope the model gives the FLOPs and the compulsory bytes moved (float32: each weight,
input and output touched once; intermediates such as attention scores are not counted) of one
call, from the config and the work of the call:

  Workload(rows, pairs, kv_rows, head_rows)
    rows      tokens a call processes (1 in decode, P in a prefill of P, B*T in training)
    pairs     causal (query, key) pairs per head (decode at position p: p+1; a prefill of P or a
              training batch: the triangle sum)
    kv_rows   key/value rows read by attention (the context held in the KV cache or the batch)
    head_rows rows sent through the LM head (the last position in inference, all in training)

Every cost is linear in these fields, so the cost of a decode averaged over its positions is the
cost of the averaged workload. A backward matmul costs two forward ones (dX and dW).

Roofline: attainable time = max(flops / peak_gflops, bytes / peak_gbps); a scope's roof_fraction
is attainable / measured time (equal to achieved GFLOPS / min(peak, intensity * peak_gbps)).
"""

from dataclasses import dataclass

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


def _linear(n_in: int, n_out: int, rows: float, residual: bool = False) -> tuple[float, float]:
    # weights (n_out,n_in) + bias, input (rows,n_in), output (rows,n_out); a fused residual add
    # reads the output too
    flops = 2.0 * rows * n_in * n_out + (rows * n_out if residual else 0.0)
    moved = n_out * n_in + n_out + rows * n_in + rows * n_out * (2 if residual else 1)
    return flops, moved * F32


def _linear_backward(n_in: int, n_out: int, rows: float) -> tuple[float, float]:
    # dX = dY W, dW += dY^T X, db += sum dY: reads W, dW, X, dY; writes dW, dX
    flops = 4.0 * rows * n_in * n_out + rows * n_out
    moved = 3 * n_out * n_in + 2 * n_out + 2 * rows * n_in + rows * n_out
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
        return _linear(C, V, w.head_rows)
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
        return _linear_backward(C, V, w.head_rows)
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
