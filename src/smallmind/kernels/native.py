"""Native kernels: wrappers with exactly the signatures of reference.py around the C core
(smallmind.kernels._native). The C side checks every shape, dtype, stride, aliasing
constraint and index before it computes, raising KernelInputError (IndexError for token
ids and positions, like the references), so a wrapper is a single call. Strided views
are used in place; a last dim that is not unit-stride is worked on as a contiguous copy.
"""

import threading

import numpy as np

from . import _native

compiler = getattr(_native, "compiler", "unknown")
cpu_features = _native.cpu_features
select_isa = _native.select_isa
isa = _native.isa
quant_isa = _native.quant_isa
select_quant_isa = _native.select_quant_isa
gemm_isa = _native.gemm_isa
select_gemm_isa = _native.select_gemm_isa
GEMM_ISAS = ("amx", "avx512bf16", "avx512", "avx2", "amx-emulated", "avx512-emulated", "generic")
bf16_products = _native.bf16_products
gemm_bf16_tile = _native.gemm_bf16_tile
QUANT_ISAS = ("amx", "avx512vnni", "avx2", "amx-emulated", "avx512vnni-emulated", "generic")
set_threads = _native.set_threads
get_threads = _native.get_threads
tuning = _native.tuning
gemm_min_rows = _native.gemm_min_rows
bf16_support = _native.bf16_support
pool_stalls = _native.pool_stalls   # tests: widen the thread pool's race windows (pool.h)



def _runnable(names, current, select) -> list[str]:
    # the names `select` accepts on this CPU, in order; `current` selected again after
    found = []
    for name in names:
        try:
            select(name)
            found.append(name)
        except ValueError:
            pass
    select(current)
    return found


def supported_isas() -> list[str]:
    """The ISAs (kernels.ISAS) this CPU runs, best first; the selection in force is kept."""
    from . import ISAS

    return _runnable(ISAS, isa(), select_isa)


def supported_gemm_isas() -> list[str]:
    """The GEMM micro-kernel builds (GEMM_ISAS) this CPU runs; the selection in force is kept.
    "avx512-emulated" and "amx-emulated" are those builds' tiles on AVX2 register pairs and in
    C, for the tests."""
    return _runnable(GEMM_ISAS, gemm_isa(), select_gemm_isa)


def supported_quant_isas() -> list[str]:
    """The quantized-kernel builds (QUANT_ISAS) this CPU runs; the selection in force is kept.
    "avx512vnni-emulated" and "amx-emulated" are the VNNI and AMX kernels with exact stand-ins
    for their instructions: the tests run them so that those kernels' logic is checked on CPUs
    without VNNI or AMX."""
    return _runnable(QUANT_ISAS, quant_isa(), select_quant_isa)


_linear = _native.linear
_embedding = _native.embedding
_embedding_backward = _native.embedding_backward
_layer_norm = _native.layer_norm
_layer_norm_backward = _native.layer_norm_backward
_rms_norm = _native.rms_norm
_gelu = _native.gelu
_gelu_backward = _native.gelu_backward
_silu = _native.silu
_swiglu = _native.swiglu
_geglu = _native.geglu
_softmax = _native.softmax
_rope = _native.rope
_kv_cache_store = _native.kv_cache_store
_attention = _native.attention
_cross_entropy = _native.cross_entropy
_adamw_step = _native.adamw_step
_quant_linear = _native.quant_linear
_quant_embedding = _native.quant_embedding
_quant_dequantize = _native.quant_dequantize
_gemm_linear = _native.gemm_linear
_gemm_dx = _native.gemm_dx
_gemm_dw = _native.gemm_dw
_round_bf16 = _native.round_bf16
_sample_softmax = _native.sample_softmax
_rope_rows = _native.rope_rows
_kv_cache_store_rows = _native.kv_cache_store_rows
_attention_rows = _native.attention_rows
_attention_train_forward = _native.attention_train_forward
_attention_train_backward = _native.attention_train_backward

_local = threading.local()


def _scratch(shape):
    # shape (T,N) -> a reusable (T,N) float32 buffer of this thread (grown, never shrunk)
    size = shape[0] * shape[1]
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(max(size, 1), dtype=np.float32)
    return buf[:size].reshape(shape)


def linear(x, w, b, out, accumulate=False):
    # x (T,K), w (N,K), b (N,) or None, out (T,N): out = x @ w.T + b, or out += that
    if _linear(x, w, b, out, accumulate):
        return out
    # many rows where the native GEMM does not run (see gemm_min_rows): BLAS, then the bias
    # and residual in place
    if accumulate:
        y = _scratch(out.shape)
        np.matmul(x, w.T, out=y)
        np.add(out, y, out=out)
    else:
        np.matmul(x, w.T, out=out)
    if b is not None:
        np.add(out, b, out=out)
    return out


def linear_gelu(x, w, b, pre, out):
    # x (T,K), w (N,K), b (N,) or None, pre, out (T,N): pre = x @ w.T + b, out = gelu(pre)
    if not _gemm_linear(x, w, b, None, pre, out, False):
        linear(x, w, b, pre)
        _gelu(pre, out)
    return out


def linear_residual(x, w, b, resid, out):
    # x (T,K), w (N,K), b (N,) or None, resid, out (T,N): out = resid + x @ w.T + b
    if not _gemm_linear(x, w, b, resid, out, None, False):
        linear(x, w, b, out)
        np.add(out, resid, out=out)
    return out


def linear_backward_input(dout, w, dx, scale=1.0, gelu_x=None):
    # dout (T,M), w (M,K), dx (T,K), gelu_x (T,K) or None: dx = scale * dout @ w [* gelu'(gelu_x)]
    if not _gemm_dx(dout, w, dx, scale, gelu_x):
        np.matmul(dout, w, out=dx)
        if scale != 1.0:
            np.multiply(dx, np.float32(scale), out=dx)
        if gelu_x is not None:
            _gelu_backward(gelu_x, dx, dx)
    return dx


def linear_backward_weight(dout, x, dw, db, scale=1.0):
    # dout (T,M), x (T,K), dw (M,K), db (M,) or None: dw += scale * dout.T @ x, db += scale * sum over rows
    if not _gemm_dw(dout, x, dw, db, scale):
        y = _scratch(dw.shape)
        np.matmul(dout.T, x, out=y)
        if scale != 1.0:
            np.multiply(y, np.float32(scale), out=y)
        np.add(dw, y, out=dw)
        if db is not None:
            db += np.float32(scale) * dout.sum(axis=0)
    return dw


def round_bf16(x, out):
    # x, out (...): nearest BF16 value (ties to even) as float32; out may be x
    return _round_bf16(x, out)


def embedding(tokens, wte, wpe, pos0, out):
    # tokens (T,) int, wte (V,C), wpe (P,C) or None, out (T,C): out[t] = wte[tok[t]] + wpe[pos0+t]
    return _embedding(tokens, wte, wpe, pos0, out)


def embedding_backward(tokens, dout, dwte):
    # tokens (N,) int, dout (N,C), dwte (V,C): dwte[tok[n]] += dout[n]
    return _embedding_backward(tokens, dout, dwte)


def layer_norm(x, weight, bias, out, eps=1e-5, mean=None, rstd=None):
    # x (T,C), weight (C,), bias (C,), out (T,C); mean, rstd (T,) saved for backward if given
    return _layer_norm(x, weight, bias, out, eps, mean, rstd)


def layer_norm_backward(dout, x, weight, mean, rstd, dx, dweight, dbias):
    # dout, x, dx (T,C); weight, dweight, dbias (C,); mean, rstd (T,); accumulates into dx, dweight, dbias
    return _layer_norm_backward(dout, x, weight, mean, rstd, dx, dweight, dbias)


def rms_norm(x, weight, out, eps=1e-6):
    # x (T,C), weight (C,), out (T,C)
    return _rms_norm(x, weight, out, eps)


def gelu(x, out):
    # x, out (...): tanh approximation (GPT-2)
    return _gelu(x, out)


def gelu_backward(x, dout, dx):
    # x, dout, dx (...): dx = dout * gelu'(x)
    return _gelu_backward(x, dout, dx)


def silu(x, out):
    # x, out (...)
    return _silu(x, out)


def swiglu(gate, up, out):
    # gate, up, out (...): silu(gate) * up
    return _swiglu(gate, up, out)


def geglu(gate, up, out):
    # gate, up, out (...): gelu_tanh(gate) * up
    return _geglu(gate, up, out)


def softmax(x, out):
    # x, out (R,N): row-wise softmax
    return _softmax(x, out)


def rope(x, pos0, theta, out, neox=False, freq_factors=None):
    # x, out (T,H,D), D even; freq_factors (D/2,) or None
    return _rope(x, pos0, theta, out, neox, freq_factors)


def kv_cache_store(k, v, k_cache, v_cache, pos0):
    # k, v (T,Hkv,D); k_cache, v_cache (Hkv,S_max,D) float32 or float16: cache[:, pos0+t] = k[t]
    _kv_cache_store(k, v, k_cache, v_cache, pos0)


def attention(q, k_cache, v_cache, pos0, out, scale, window=0):
    # q, out (T,H,D); k_cache, v_cache (Hkv,S_max,D) holding positions 0..pos0+T-1; window 0: none
    # a float16 cache: llama.cpp's arithmetic (reference._attention_half)
    return _attention(q, k_cache, v_cache, pos0, out, scale, window)


def rope_rows(x, positions, theta, out, neox=False, freq_factors=None):
    # x, out (B,H,D), positions (B,) int: row b rotated as rope() at pos0 = positions[b]
    return _rope_rows(x, positions, theta, out, neox, freq_factors)


def kv_cache_store_rows(k, v, k_caches, v_caches, layer, positions):
    # k, v (B,Hkv,D); k_caches, v_caches B arrays (n_layers,Hkv,S_max,D): k_caches[b][layer][:, positions[b]] = k[b]
    _kv_cache_store_rows(k, v, k_caches, v_caches, layer, positions)


def attention_rows(q, k_caches, v_caches, layer, positions, out, scale, window=0):
    # q, out (B,H,D); k_caches, v_caches B arrays (n_layers,Hkv,S_max,D): row b as attention() over its own
    # caches' layer at pos0 = positions[b]
    return _attention_rows(q, k_caches, v_caches, layer, positions, out, scale, window)



def attention_train_forward(qkv, probs, out, scale, mask=None):
    # qkv (B*T,3C) rows [q|k|v], heads of D = C/H columns in each third; probs (B,H,T,T): causal
    # softmax of scale * q k^T; out (B*T,C): (probs [* mask]) v, heads merged (probs stays undropped)
    return _attention_train_forward(qkv, probs, out, scale, mask)


def attention_train_backward(dout, qkv, probs, dqkv, scale, mask=None):
    # dout (B*T,C), qkv (B*T,3C), probs (B,H,T,T) (its causal part is read), mask like probs or None
    # -> dqkv (B*T,3C) written (see reference.attention_train_backward)
    return _attention_train_backward(dout, qkv, probs, dqkv, scale, mask)

def cross_entropy(logits, targets, losses, dlogits=None, dscale=1.0):
    # logits (N,V), targets (N,) int, losses (N,); dlogits (N,V) or None (may be logits itself)
    return _cross_entropy(logits, targets, losses, dlogits, dscale)


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    # param, grad, m, v (N,) updated in place; step counts from 1
    return _adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)


def sample_softmax(logits, scale, u, probs):
    # logits (V,), probs (V,) out -> the token drawn from softmax(scale * logits) at u in [0, 1)
    return _sample_softmax(logits, scale, u, probs)


def quant_linear(x, w, b, out, accumulate=False):
    # x (T,K), w (N,K) QTensor, b (N,) or None, out (T,N): out (+)= x @ w.T + b (activations quantized once)
    return _quant_linear(x, w, b, out, accumulate)


def quant_embedding(tokens, w, wpe, pos0, out):
    # tokens (T,) int, w (V,C) QTensor, wpe (P,C) or None, out (T,C): w's rows (+ wpe rows)
    return _quant_embedding(tokens, w, wpe, pos0, out)


def quant_dequantize(w, out):
    # w (N,K) QTensor, out (N,K) float32
    return _quant_dequantize(w, out)
