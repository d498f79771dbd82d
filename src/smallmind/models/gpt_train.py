"""Training forward and backward for the GPT of models/gpt.py, llm.c style.

`TrainWorkspace` owns every activation and activation-gradient buffer, allocated once for
one (batch, seq) shape and reused every step. `forward` reads top to bottom like the model:
embedding, then per layer ln_1, qkv, attention, output projection + residual, ln_2, MLP up,
GELU, MLP down + residual, then ln_f, the LM head and the loss. `backward` walks the same
recipe in reverse and ACCUMULATES every parameter gradient into a Params laid out like the
weights, so the optimizer sees one flat gradient buffer.

Each layer type is a forward/backward pair of small functions over (N, C) rows (N = B*T).
Everything goes through smallmind.kernels (NumPy references or native C, chosen at import).
The linear layers use its fused products: the MLP's up projection writes the GELU beside
its output, the projections add the residual as they store, and the backward products
apply the GELU's gradient and sum the bias gradient in the same pass. Attention is one kernel
call each way (kernels.attention_train_forward / _backward) over the (batch, head) pairs,
reading the heads straight from the qkv rows; it keeps only the probabilities.

Mixed precision (precision="bf16"): the weights stay float32 (the optimizer's master copy);
each forward rounds them once into a BF16 copy, and every linear layer's product, forward
and backward, takes BF16-rounded inputs (weights, the activations it reads, the gradient it
receives) with float32 sums and outputs, as BF16 hardware products do: on CPUs with
AVX512-BF16 the native GEMM runs them on its BF16 tiles (kernels.bf16_products), elsewhere the
float32 kernels take the rounded values. Norms, softmax, loss, attention and the optimizer
stay float32.

Dropout (cfg.dropout > 0) is active only when forward is given a `dropout_rng`: on the
embeddings, on the attention probabilities and on the outputs of the attention projection
and the MLP down projection, as in nanoGPT. Masks are drawn from that Generator, so a seed
fixes them.
"""

import math

import numpy as np

from .. import kernels
from ..errors import SmallMindError
from ..memory import require
from ..scope import scope
from .gpt import GPTConfig, Params, param_shapes

PRECISIONS = ("fp32", "bf16")


class TrainWorkspace:
    """Every buffer forward and backward need for batches of shape (batch, seq)."""

    def __init__(self, cfg: GPTConfig, batch: int, seq: int, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise SmallMindError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if batch < 1 or seq < 1:
            raise SmallMindError("batch and seq must be at least 1")
        if seq > cfg.context_length:
            raise SmallMindError(f"seq {seq} exceeds the model's context length {cfg.context_length}")
        B, T, C, H, L = batch, seq, cfg.d_model, cfg.n_heads, cfg.n_layers
        V, N = cfg.vocab_size, batch * seq
        require(self.nbytes_for(cfg, batch, seq, precision), f"a training batch of {batch} x {seq} tokens",
                "use a smaller batch size or sequence length")
        self.cfg, self.batch, self.seq, self.precision = cfg, batch, seq, precision

        def f32(*shape):
            return np.zeros(shape, dtype=np.float32)

        # activations saved for backward, one slot per layer
        self.embedded = f32(N, C)               # block 0 input
        self.resid_mid = f32(L, N, C)           # x + attn(ln_1(x))
        self.resid_out = f32(L, N, C)           # block output = next block's input
        self.ln_1, self.ln_2 = f32(L, N, C), f32(L, N, C)
        self.ln_1_mean, self.ln_1_rstd = f32(L, N), f32(L, N)
        self.ln_2_mean, self.ln_2_rstd = f32(L, N), f32(L, N)
        self.qkv = f32(L, N, 3 * C)             # q, k, v; attention reads them as (B,H,T,D) views
        self.probs = f32(L, B, H, T, T)         # causal softmax of the scores
        self.att = f32(L, N, C)                 # heads merged back: the output projection's input
        self.mlp_pre = f32(L, N, 4 * C)         # MLP up-projection (GELU input, float32 in every precision)
        self.mlp_act = f32(L, N, 4 * C)         # GELU output
        self.ln_f = f32(N, C)
        self.ln_f_mean, self.ln_f_rstd = f32(N), f32(N)
        self.logits = f32(B, T, V)
        self.losses = f32(N)
        self.dlogits = f32(N, V)                # d(mean loss)/d(logits), made by the loss in forward
        self.dproj = f32(N, C)                  # scratch: a projection's gradient through dropout

        # activation gradients (reused by every layer on the way back)
        self.dresid = f32(N, C)
        self.dln = f32(N, C)
        self.datt = f32(N, C)
        self.dmlp_pre = f32(N, 4 * C)           # made by the down projection's backward, through the GELU
        self.dqkv = f32(N, 3 * C)

        # bf16: the rounded weights (laid out as Params) and a rounded copy of each product's dout
        self.weights_bf16 = self.dout_bf16 = None
        if precision == "bf16":
            self.weights_bf16 = Params(cfg)
            self.dout_bf16 = f32(N * max(V, 4 * C))

        p = cfg.dropout
        # the workspace only needs masks for a model that has dropout
        self.dropout_masks = None
        if p > 0:
            self.dropout_masks = {
                "embedded": f32(N, C),
                "probs": f32(L, B, H, T, T),
                "attn_out": f32(L, N, C),
                "mlp_out": f32(L, N, C),
            }
        self.dropout_active = False
        self.tokens = np.zeros((B, T), dtype=np.int32)
        self.targets = np.zeros((B, T), dtype=np.int32)
        self.has_targets = False

    @staticmethod
    def nbytes_for(cfg: GPTConfig, batch: int, seq: int, precision: str = "fp32") -> int:
        """The bytes a workspace for (batch, seq) allocates: the buffers above, counted before any is made."""
        B, T, C, H, L, V = batch, seq, cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.vocab_size
        N = B * T
        per_layer = N * C * 5 + N * 4 + N * 3 * C + B * H * T * T + N * 4 * C * 2
        floats = (L * per_layer + N * C * 2 + N * 2 + N * V * 2 + N
                  + N * C * 4 + N * 4 * C + N * 3 * C)
        if cfg.dropout > 0:
            floats += N * C + L * (B * H * T * T + 2 * N * C)
        if precision == "bf16":
            floats += sum(math.prod(shape) for _, shape, _ in param_shapes(cfg)) + N * max(V, 4 * C)
        return 4 * (floats + 2 * N)  # + the int32 tokens and targets


def train_flops_per_token(cfg: GPTConfig, seq: int) -> float:
    """Floating-point operations of one trained token (forward + backward), PaLM's count:
    6 per weight of every product (the LM head included) + 12 L T C for the attention scores
    and their weighted sums, which this model computes over the full (T, T) square."""
    C, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    product_weights = L * 12 * C * C + V * C
    return 6.0 * product_weights + 12.0 * L * seq * C


# ---- layer pairs ------------------------------------------------------------------------

def embedding_forward(tokens, wte, wpe, out):
    # tokens (B,T) int32, wte (V,C), wpe (P,C), out (B*T,C): token + position embeddings
    B, T = tokens.shape
    kernels.embedding(tokens.reshape(-1), wte, None, 0, out)
    out.reshape(B, T, -1)[...] += wpe[:T]


def embedding_backward(tokens, dout, dwte, dwpe):
    # tokens (B,T), dout (B*T,C), dwte (V,C), dwpe (P,C): scatter-add rows, sum positions over batch
    B, T = tokens.shape
    kernels.embedding_backward(tokens.reshape(-1), dout, dwte)
    dwpe[:T] += dout.reshape(B, T, -1).sum(axis=0)


def layer_norm_forward(x, weight, bias, out, mean, rstd, eps):
    # x, out (N,C); weight, bias (C,); mean, rstd (N,) saved for backward
    kernels.layer_norm(x, weight, bias, out, eps, mean, rstd)


def layer_norm_backward(dout, x, weight, mean, rstd, dx, dweight, dbias):
    # dout, x, dx (N,C); weight, dweight, dbias (C,): accumulates into dx, dweight, dbias
    kernels.layer_norm_backward(dout, x, weight, mean, rstd, dx, dweight, dbias)


def linear_forward(x, weight, bias, out):
    # x (N,K), weight (M,K), bias (M,) or None, out (N,M): out = x @ weight.T + bias
    kernels.linear(x, weight, bias, out)


def linear_gelu_forward(x, weight, bias, pre, out):
    # x (N,K), weight (M,K), bias (M,), pre, out (N,M): pre = x @ weight.T + bias, out = gelu(pre)
    kernels.linear_gelu(x, weight, bias, pre, out)


def linear_backward(dout, x, weight, dx, dweight, dbias, scale=1.0, gelu_x=None):
    # dout (N,M), x (N,K), weight (M,K), dx (N,K); dweight (M,K), dbias (M,) or None accumulate;
    # dx = scale * dout @ weight, times gelu'(gelu_x) when given (gelu_x (N,K): the GELU's input
    # whose output was x); dweight += scale * dout.T @ x; dbias += scale * sum over rows of dout
    kernels.linear_backward_input(dout, weight, dx, scale, gelu_x)
    kernels.linear_backward_weight(dout, x, dweight, dbias, scale)


def attention_forward(qkv, probs, out, mask=None):
    # qkv (B*T,3C), probs (B,H,T,T), out (B*T,C): causal softmax(q k^T / sqrt(D)) saved in probs,
    # out = dropout(probs) @ v with the heads merged; mask (B,H,T,T) is the dropout mask or None
    H = probs.shape[1]
    kernels.attention_train_forward(qkv, probs, out, 1.0 / math.sqrt(qkv.shape[1] // (3 * H)), mask)


def attention_backward(dout, qkv, probs, dqkv, mask=None):
    # dout (B*T,C), qkv (B*T,3C), probs (B,H,T,T) -> dqkv (B*T,3C) written; mask as in the forward
    H = probs.shape[1]
    kernels.attention_train_backward(dout, qkv, probs, dqkv, 1.0 / math.sqrt(qkv.shape[1] // (3 * H)), mask)


def loss_forward(logits, targets, losses, dlogits):
    # logits (N,V), targets (N,), losses (N,), dlogits (N,V) -> mean cross-entropy;
    # dlogits = d(mean loss)/d(logits), computed in the same pass over the logits
    kernels.cross_entropy(logits, targets, losses, dlogits, 1.0 / logits.shape[0])
    return float(losses.mean(dtype=np.float64))


def _draw_mask(rng, mask, p):
    # mask (...): 0 with probability p, else 1/(1-p) (inverted dropout)
    rng.random(out=mask, dtype=np.float32)
    np.multiply(mask >= p, np.float32(1.0 / (1.0 - p)), out=mask)


# ---- the model ----------------------------------------------------------------------------

def _check_tokens(ws, name, ids):
    # ids (B,T) integer token ids -> int32 (B,T), validated
    ids = np.asarray(ids)
    if ids.shape != (ws.batch, ws.seq):
        raise SmallMindError(f"{name} must have shape ({ws.batch}, {ws.seq}) for this workspace, got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise SmallMindError(f"{name} must be integer token ids, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= ws.cfg.vocab_size):
        raise SmallMindError(f"{name} hold ids outside [0, {ws.cfg.vocab_size})")
    return ids


def forward(params: Params, ws: TrainWorkspace, tokens, targets=None, *, dropout_rng=None) -> float:
    # tokens, targets (B,T) int -> mean cross-entropy (nan without targets); logits left in ws.logits (B,T,V)
    cfg = ws.cfg
    if params.cfg != cfg:
        raise SmallMindError("params and workspace were made for different model configs")
    ws.tokens[...] = _check_tokens(ws, "tokens", tokens)
    ws.has_targets = targets is not None
    if ws.has_targets:
        ws.targets[...] = _check_tokens(ws, "targets", targets)
    p = cfg.dropout
    ws.dropout_active = p > 0 and dropout_rng is not None
    masks = ws.dropout_masks if ws.dropout_active else None
    if masks is not None:
        for mask in masks.values():
            _draw_mask(dropout_rng, mask, p)
    eps = cfg.layer_norm_eps
    bf16 = ws.precision == "bf16"
    w = params
    if bf16:
        # the products read the weights rounded once per step; biases and norms stay float32
        w = ws.weights_bf16
        kernels.round_bf16(params.flat, w.flat)

    with scope("forward"), kernels.bf16_products(bf16):
        with scope("embedding"):
            embedding_forward(ws.tokens, params["wte"], params["wpe"], ws.embedded)
            if masks is not None:
                ws.embedded *= masks["embedded"]
        x = ws.embedded
        for l in range(cfg.n_layers):
            h = f"h.{l}."
            with scope("norm"):
                layer_norm_forward(x, params[h + "ln_1.weight"], params[h + "ln_1.bias"], ws.ln_1[l],
                                   ws.ln_1_mean[l], ws.ln_1_rstd[l], eps)
                _product_input(bf16, ws.ln_1[l])
            with scope("matmul.qkv"):
                linear_forward(ws.ln_1[l], w[h + "attn.qkv.weight"], params[h + "attn.qkv.bias"], ws.qkv[l])
            with scope("attention"):
                attention_forward(ws.qkv[l], ws.probs[l], ws.att[l], None if masks is None else masks["probs"][l])
                _product_input(bf16, ws.att[l])
            with scope("matmul.attn_out"):
                _residual_linear(x, ws.att[l], w[h + "attn.proj.weight"], params[h + "attn.proj.bias"],
                                 ws.resid_mid[l], None if masks is None else masks["attn_out"][l])
            x = ws.resid_mid[l]
            with scope("norm"):
                layer_norm_forward(x, params[h + "ln_2.weight"], params[h + "ln_2.bias"], ws.ln_2[l],
                                   ws.ln_2_mean[l], ws.ln_2_rstd[l], eps)
                _product_input(bf16, ws.ln_2[l])
            with scope("matmul.mlp_up"):
                linear_gelu_forward(ws.ln_2[l], w[h + "mlp.up.weight"], params[h + "mlp.up.bias"], ws.mlp_pre[l],
                                    ws.mlp_act[l])
                _product_input(bf16, ws.mlp_act[l])
            with scope("matmul.mlp_down"):
                _residual_linear(x, ws.mlp_act[l], w[h + "mlp.down.weight"], params[h + "mlp.down.bias"],
                                 ws.resid_out[l], None if masks is None else masks["mlp_out"][l])
            x = ws.resid_out[l]
        with scope("norm"):
            layer_norm_forward(x, params["ln_f.weight"], params["ln_f.bias"], ws.ln_f, ws.ln_f_mean, ws.ln_f_rstd,
                               eps)
            _product_input(bf16, ws.ln_f)
        logits = ws.logits.reshape(-1, cfg.vocab_size)
        with scope("matmul.lm_head"):
            linear_forward(ws.ln_f, w.lm_head, None, logits)
        if not ws.has_targets:
            return float("nan")
        with scope("loss"):
            return loss_forward(logits, ws.targets.reshape(-1), ws.losses, ws.dlogits)


def _product_input(bf16, x):
    # x (N,K): an activation read only by products, rounded in place to what a BF16 product reads
    if bf16:
        kernels.round_bf16(x, x)


def _product_grad(ws, dout):
    # dout (N,M) -> the gradient a product reads: dout itself, or its BF16 rounding in ws.dout_bf16
    # (dout itself stays float32: the residual stream's gradient keeps accumulating in it)
    if ws.precision != "bf16":
        return dout
    rounded = ws.dout_bf16[:dout.size].reshape(dout.shape)
    kernels.round_bf16(dout, rounded)
    return rounded


def _residual_linear(x, inp, weight, bias, out, mask):
    # x, out (N,C); inp (N,K); weight (C,K): out = x + dropout(inp @ weight.T + bias)
    if mask is None:
        kernels.linear_residual(inp, weight, bias, x, out)
        return
    linear_forward(inp, weight, bias, out)
    out *= mask
    out += x


def backward(params: Params, grads: Params, ws: TrainWorkspace, loss_scale: float = 1.0) -> None:
    # accumulates into grads (a Params) the gradient of loss_scale * (mean loss of the last forward)
    cfg = ws.cfg
    if grads.cfg != cfg or params.cfg != cfg:
        raise SmallMindError("params, grads and workspace were made for different model configs")
    if not ws.has_targets:
        raise SmallMindError("backward needs a forward with targets first")
    masks = ws.dropout_masks if ws.dropout_active else None
    dresid, dln = ws.dresid, ws.dln
    bf16 = ws.precision == "bf16"
    w = ws.weights_bf16 if bf16 else params  # rounded by the forward

    with scope("backward"), kernels.bf16_products(bf16):
        with scope("matmul.lm_head"):
            linear_backward(_product_grad(ws, ws.dlogits), ws.ln_f, w.lm_head, dln, grads.lm_head, None, loss_scale)
        with scope("norm"):
            dresid.fill(0.0)
            x_last = ws.resid_out[cfg.n_layers - 1]
            layer_norm_backward(dln, x_last, params["ln_f.weight"], ws.ln_f_mean, ws.ln_f_rstd, dresid,
                                grads["ln_f.weight"], grads["ln_f.bias"])
        for l in reversed(range(cfg.n_layers)):
            h = f"h.{l}."
            x_in = ws.resid_out[l - 1] if l > 0 else ws.embedded
            with scope("matmul.mlp_down"):
                # straight through the GELU to the up projection's output gradient
                dproj = _residual_linear_grad(dresid, ws.dproj, None if masks is None else masks["mlp_out"][l])
                linear_backward(_product_grad(ws, dproj), ws.mlp_act[l], w[h + "mlp.down.weight"], ws.dmlp_pre,
                                grads[h + "mlp.down.weight"], grads[h + "mlp.down.bias"], gelu_x=ws.mlp_pre[l])
            with scope("matmul.mlp_up"):
                linear_backward(_product_grad(ws, ws.dmlp_pre), ws.ln_2[l], w[h + "mlp.up.weight"], dln,
                                grads[h + "mlp.up.weight"], grads[h + "mlp.up.bias"])
            with scope("norm"):
                layer_norm_backward(dln, ws.resid_mid[l], params[h + "ln_2.weight"], ws.ln_2_mean[l],
                                    ws.ln_2_rstd[l], dresid, grads[h + "ln_2.weight"], grads[h + "ln_2.bias"])
            with scope("matmul.attn_out"):
                dproj = _residual_linear_grad(dresid, ws.dproj, None if masks is None else masks["attn_out"][l])
                linear_backward(_product_grad(ws, dproj), ws.att[l], w[h + "attn.proj.weight"], ws.datt,
                                grads[h + "attn.proj.weight"], grads[h + "attn.proj.bias"])
            with scope("attention"):
                attention_backward(ws.datt, ws.qkv[l], ws.probs[l], ws.dqkv, None if masks is None else masks["probs"][l])
            with scope("matmul.qkv"):
                linear_backward(_product_grad(ws, ws.dqkv), ws.ln_1[l], w[h + "attn.qkv.weight"], dln,
                                grads[h + "attn.qkv.weight"], grads[h + "attn.qkv.bias"])
            with scope("norm"):
                layer_norm_backward(dln, x_in, params[h + "ln_1.weight"], ws.ln_1_mean[l], ws.ln_1_rstd[l],
                                    dresid, grads[h + "ln_1.weight"], grads[h + "ln_1.bias"])
        with scope("embedding"):
            if masks is not None:
                dresid *= masks["embedded"]
            embedding_backward(ws.tokens, dresid, grads["wte"], grads["wpe"])


def _residual_linear_grad(dout, scratch, mask):
    # dout, scratch (N,C) -> the gradient reaching the projection output (through dropout if any)
    if mask is None:
        return dout
    np.multiply(dout, mask, out=scratch)
    return scratch
