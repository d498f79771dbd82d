"""NumPy twins of the quantized-weight kernels (QTensor weights): the definition of their results.

Block decoding (`dequantize`, `embedding`) gives exactly the float32 values of the reference
decoder (gguf.quants.dequantize), operation for operation.

A product (`linear`) runs as llama.cpp's CPU backend does: the activations are quantized once
to the weight type's `vec_dot_type` (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the
K-quants) the way its x86 build does, each block's dot product is an exact integer, and the
block results are scaled and summed in float32 in block order with the expressions of
llama.cpp's scalar vec_dot functions (for the K-quants one float step per 256-value
super-block: d*isum - dmin*msum). The native kernels compute the same expressions in the same
order, so they agree bit for bit except for F16/BF16 weights, whose float dot products sum in
a different order (llama.cpp rounds the activations to the weight's 16-bit format first; so do
we).
"""

import numpy as np

from ..errors import KernelInputError
from .qtensor import QTYPES, QTensor, row_bytes

QK = 32        # values per block of the 32-blocks formats
QK_K = 256     # values per K-quant super-block
VEC_DOT_TYPE = {"F16": "F16", "BF16": "BF16", "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0",
                "Q4_1": "Q8_1", "Q5_1": "Q8_1", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K"}
_ROWS_PER_CHUNK_VALUES = 1 << 22  # bound on the size of a product's intermediates


# ---------------------------------------------------------------- fields of the blocks

def _f16(b):
    # b (..., 2) uint8 -> (...) float32: a little-endian IEEE half
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles32(qs):
    # qs (..., 16) uint8 -> (..., 32) uint8: low nibbles are values 0..15, high nibbles 16..31
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits32(qh):
    # qh (..., 4) uint8 -> (..., 32) uint8: bit j of the little-endian uint32 is value j's fifth bit
    bits = np.ascontiguousarray(qh).view("<u4")[..., 0]
    return ((bits[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _k_scales(s):
    # s (..., 12) uint8 -> scales, mins (..., 8) uint8: the 6-bit pairs of Q4_K / Q5_K
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _q4_k_values(qs):
    # qs (..., 128) uint8 -> (..., 8, 32) uint8: chunk c of 32 bytes holds sub-blocks 2c (low) and 2c+1 (high)
    q = qs.reshape(qs.shape[:-1] + (4, 1, 32)) >> np.array([0, 4], np.uint8).reshape(2, 1)
    return (q & 0x0F).reshape(qs.shape[:-1] + (8, 32))


def _q5_k_values(qh, qs):
    # qh (..., 32), qs (..., 128) uint8 -> (..., 8, 32) uint8: bit s of qh[i] is sub-block s's fifth bit
    hi = (qh[..., None, :] >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & 1
    return _q4_k_values(qs) | (hi << 4)


def _q6_k_values(ql, qh):
    # ql (..., 128), qh (..., 64) uint8 -> (..., 16, 16) int8 in -32..31, in groups of 16 values
    lead = ql.shape[:-1]
    lo = ql.reshape(lead + (2, 1, 64)) >> np.array([0, 4], np.uint8).reshape(2, 1)
    lo = (lo & 0x0F).reshape(lead + (2, 4, 32))
    hi = qh.reshape(lead + (2, 1, 32)) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    hi = hi & 0x03
    q = (lo | (hi << 4)).astype(np.int8) - np.int8(32)
    return q.reshape(lead + (16, 16))


def _blocks(w: QTensor):
    # w (N,K) -> (N, nb, bytes per block) uint8 view of its data
    _, block, size = QTYPES[w.qtype]
    return w.data.reshape(w.shape[0], w.shape[1] // block, size)


# ---------------------------------------------------------------- dequantize

def _dequantize_blocks(qtype, b):
    # b (..., bytes per block) uint8 -> (..., values per block) float32, as gguf computes them
    if qtype == "F16":
        return _f16(b)[..., None]
    if qtype == "BF16":
        return (np.ascontiguousarray(b).view("<u2").astype(np.uint32) << 16).view(np.float32)
    if qtype == "Q8_0":
        return b[..., 2:].view(np.int8).astype(np.float32) * _f16(b[..., 0:2])[..., None]
    if qtype == "Q4_0":
        q = _nibbles32(b[..., 2:]).astype(np.int8) - np.int8(8)
        return _f16(b[..., 0:2])[..., None] * q.astype(np.float32)
    if qtype == "Q4_1":
        q = _nibbles32(b[..., 4:]).astype(np.float32)
        return _f16(b[..., 0:2])[..., None] * q + _f16(b[..., 2:4])[..., None]
    if qtype == "Q5_0":
        q = (_nibbles32(b[..., 6:]) | (_high_bits32(b[..., 2:6]) << 4)).astype(np.int8) - np.int8(16)
        return _f16(b[..., 0:2])[..., None] * q.astype(np.float32)
    if qtype == "Q5_1":
        q = (_nibbles32(b[..., 8:]) | (_high_bits32(b[..., 4:8]) << 4)).astype(np.float32)
        return _f16(b[..., 0:2])[..., None] * q + _f16(b[..., 2:4])[..., None]
    if qtype in ("Q4_K", "Q5_K"):
        sc, mn = _k_scales(b[..., 4:16])
        d = (_f16(b[..., 0:2])[..., None] * sc.astype(np.float32))[..., None]
        dm = (_f16(b[..., 2:4])[..., None] * mn.astype(np.float32))[..., None]
        q = _q4_k_values(b[..., 16:]) if qtype == "Q4_K" else _q5_k_values(b[..., 16:48], b[..., 48:])
        return (d * q.astype(np.float32) - dm).reshape(b.shape[:-1] + (QK_K,))
    if qtype == "Q6_K":
        sc = b[..., 192:208].view(np.int8).astype(np.float32)
        d = (_f16(b[..., 208:210])[..., None] * sc)[..., None]
        q = _q6_k_values(b[..., 0:128], b[..., 128:192]).astype(np.float32)
        return (d * q).reshape(b.shape[:-1] + (QK_K,))
    raise KernelInputError(f"unknown block format {qtype!r}")


def _check_qtensor(w):
    # the fields a QTensor had when built may have been replaced since: check what the kernels read
    if w.__class__ is not QTensor:
        raise KernelInputError(f"w must be a QTensor, got {type(w).__name__}")
    if w.qtype not in QTYPES:
        raise KernelInputError(f"{w.name or 'w'}: unknown block format {w.qtype!r}")
    rows, cols = w.shape
    block = QTYPES[w.qtype][1]
    if cols % block:
        raise KernelInputError(f"{w.name or 'w'}: {cols} columns is not a whole number of {w.qtype} blocks")
    want = (rows, row_bytes(w.qtype, cols))
    d = w.data
    if not isinstance(d, np.ndarray) or d.dtype != np.uint8 or d.shape != want or not d.flags.c_contiguous:
        raise KernelInputError(f"{w.name or 'w'}: data must be C-contiguous uint8 of shape {want} "
                               f"for a {rows} x {cols} {w.qtype} tensor")


def _check_out(out, shape, name="out"):
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise KernelInputError(f"{name} must be a float32 numpy array")
    if out.shape != shape:
        raise KernelInputError(f"{name} shape {out.shape} must be {shape}")
    if not out.flags.writeable:
        raise KernelInputError(f"{name} is read-only")


def _check_disjoint(out, name, other, other_name):
    if other is not None and np.shares_memory(out, other):
        raise KernelInputError(f"{name} must not overlap {other_name}")


def dequantize(w: QTensor, out: np.ndarray) -> np.ndarray:
    # w (N,K) QTensor, out (N,K) float32: the values the block format holds
    _check_qtensor(w)
    _check_out(out, w.shape)
    _check_disjoint(out, "out", w.data, "w's data")
    out[...] = _dequantize_blocks(w.qtype, _blocks(w)).reshape(w.shape)
    return out


def embedding(tokens, w: QTensor, wpe, pos0, out):
    # tokens (T,) int, w (V,C) QTensor, wpe (P,C) float32 or None, out (T,C): w[tok[t]] (+ wpe[pos0+t])
    _check_qtensor(w)
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype not in (np.int32, np.int64):
        raise KernelInputError("tokens must be a 1D int32 or int64 numpy array")
    T, (V, C) = tokens.shape[0], w.shape
    _check_out(out, (T, C))
    _check_disjoint(out, "out", w.data, "w's data")
    _check_disjoint(out, "out", tokens, "tokens")
    if wpe is not None:
        if not isinstance(wpe, np.ndarray) or wpe.dtype != np.float32 or wpe.ndim != 2 or wpe.shape[1] != C:
            raise KernelInputError(f"wpe must be a float32 (P, {C}) array")
        _check_disjoint(out, "out", wpe, "wpe")
    if isinstance(pos0, bool) or not isinstance(pos0, (int, np.integer)) or pos0 < 0:
        raise KernelInputError(f"pos0 must be an integer >= 0, got {pos0!r}")
    if np.any(tokens < 0) or np.any(tokens >= V):
        raise IndexError(f"token id out of range for a vocabulary of {V}")
    if wpe is not None and pos0 + T > wpe.shape[0]:
        raise IndexError(f"{T} positions from {pos0} do not fit the position-embedding table ({wpe.shape[0]})")
    rows = _dequantize_blocks(w.qtype, _blocks(w)[tokens]).reshape(T, C)
    if wpe is not None:
        rows = rows + wpe[pos0:pos0 + T]
    out[...] = rows
    return out


# ---------------------------------------------------------------- activation quantization

def _to_f16(v):
    # v (...) float32 -> the nearest half (ties to even), as float32
    return v.astype(np.float16).astype(np.float32)


def _to_bf16(v):
    # v (...) float32 -> the nearest bfloat16 (ties to even; NaN stays a quiet NaN), as float32
    u = v.view(np.uint32)
    r = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) & np.uint32(0xFFFF0000)
    r = np.where(np.isnan(v), (u & np.uint32(0xFFFF0000)) | np.uint32(0x00400000), r)
    return r.astype(np.uint32).view(np.float32)


def quantize_q8_0(x):
    # x (T,K) float32 -> d (T, K/32) float32 (half values), q (T, K/32, 32) int8
    xb = x.reshape(x.shape[0], x.shape[1] // QK, QK)
    amax = np.abs(xb).max(axis=-1)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        iscale = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(xb * iscale[..., None]).astype(np.int8)
    return _to_f16(d), q


def quantize_q8_1(x):
    # x (T,K) float32 -> d, s (T, K/32) float32 (half values; s = d * sum q), q (T, K/32, 32) int8
    xb = x.reshape(x.shape[0], x.shape[1] // QK, QK)
    amax = np.abs(xb).max(axis=-1)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        iscale = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(xb * iscale[..., None]).astype(np.int8)
    s = d * q.astype(np.int32).sum(axis=-1).astype(np.float32)
    return _to_f16(d), _to_f16(s), q


def quantize_q8_k(x):
    # x (T,K) float32 -> d (T, K/256) float32, q (T, K/256, 256) int8, bsums (T, K/256, 16) int32
    xb = x.reshape(x.shape[0], x.shape[1] // QK_K, QK_K)
    at = np.abs(xb).argmax(axis=-1)[..., None]
    peak = np.take_along_axis(xb, at, axis=-1)[..., 0]   # the value of largest magnitude, first of ties
    zero = peak == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / peak).astype(np.float32)
        d = np.where(zero, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    q = np.minimum(np.rint(xb * iscale[..., None]), 127).astype(np.int8)
    bsums = q.reshape(q.shape[:-1] + (16, 16)).astype(np.int32).sum(axis=-1)
    return d, q, bsums


# ---------------------------------------------------------------- products

def _idot(wq, yq):
    # wq (N, nb, S, L) ints, yq (T, nb, S, L) ints -> (nb, S, N, T) float64 holding exact integers
    # (each product is below 2^15 and each sum below 2^25: exact in float64, whatever the BLAS order)
    a = np.ascontiguousarray(wq.transpose(1, 2, 0, 3), dtype=np.float64)
    b = np.ascontiguousarray(yq.transpose(1, 2, 3, 0), dtype=np.float64)
    return a @ b


def _linear_blocks(qtype, wb, act):
    # wb (N, nb, bytes) uint8, act: the quantized activations -> (T, N) float32, blocks summed in order
    N, nb = wb.shape[0], wb.shape[1]
    f32 = np.float32
    if qtype in ("F16", "BF16"):
        # products of two 16-bit floats are exact in float64; the sum is rounded once
        wf = _dequantize_blocks(qtype, wb).reshape(N, -1).astype(np.float64)
        return (act.astype(np.float64) @ wf.T).astype(f32)
    if qtype in ("Q4_0", "Q5_0", "Q8_0"):
        dy, qy = act
        if qtype == "Q4_0":
            wq, dx = _nibbles32(wb[..., 2:]).astype(np.int8) - np.int8(8), _f16(wb[..., 0:2])
        elif qtype == "Q5_0":
            wq = (_nibbles32(wb[..., 6:]) | (_high_bits32(wb[..., 2:6]) << 4)).astype(np.int8) - np.int8(16)
            dx = _f16(wb[..., 0:2])
        else:
            wq, dx = wb[..., 2:].view(np.int8), _f16(wb[..., 0:2])
        isum = _idot(wq[:, :, None, :], qy[:, :, None, :])[:, 0].astype(f32)  # (nb, N, T)
        acc = np.zeros((qy.shape[0], N), f32)
        for b in range(nb):
            if qtype == "Q4_0":    # sumi * dx * dy
                term = isum[b].T * dx[:, b] * dy[:, b, None]
            elif qtype == "Q5_0":  # (dx * dy) * sumi
                term = (dx[None, :, b] * dy[:, b, None]) * isum[b].T
            else:                  # sumi * (dx * dy)
                term = isum[b].T * (dx[None, :, b] * dy[:, b, None])
            acc += term
        return acc
    if qtype in ("Q4_1", "Q5_1"):
        dy, sy, qy = act
        if qtype == "Q4_1":
            wq, dx, mx = _nibbles32(wb[..., 4:]), _f16(wb[..., 0:2]), _f16(wb[..., 2:4])
        else:
            wq = _nibbles32(wb[..., 8:]) | (_high_bits32(wb[..., 4:8]) << 4)
            dx, mx = _f16(wb[..., 0:2]), _f16(wb[..., 2:4])
        isum = _idot(wq[:, :, None, :], qy[:, :, None, :])[:, 0].astype(f32)
        acc = np.zeros((qy.shape[0], N), f32)
        for b in range(nb):       # (dx * dy) * sumi + mx * sy
            acc += (dx[None, :, b] * dy[:, b, None]) * isum[b].T + mx[None, :, b] * sy[:, b, None]
        return acc
    dy, qy, bsums = act
    T = qy.shape[0]
    if qtype in ("Q4_K", "Q5_K"):
        sc, mn = _k_scales(wb[..., 4:16])
        wq = _q4_k_values(wb[..., 16:]) if qtype == "Q4_K" else _q5_k_values(wb[..., 16:48], wb[..., 48:])
        sub = _idot(wq, qy.reshape(T, nb, 8, 32))                             # (nb, 8, N, T)
        isum = np.einsum("bsnt,nbs->bnt", sub, sc.astype(np.float64))        # exact below 2^31
        pairs = (bsums[..., 0::2] + bsums[..., 1::2]).astype(np.float64)     # (T, nb, 8)
        msum = np.einsum("tbs,nbs->bnt", pairs, mn.astype(np.float64))
        dx, dmx = _f16(wb[..., 0:2]), _f16(wb[..., 2:4])
        isum, msum = isum.astype(f32), msum.astype(f32)
        acc = np.zeros((T, N), f32)
        for b in range(nb):       # (dx * dy) * isum - (dmin * dy) * msum
            acc += (dx[None, :, b] * dy[:, b, None]) * isum[b].T - (dmx[None, :, b] * dy[:, b, None]) * msum[b].T
        return acc
    # Q6_K: sixteen groups of 16 values with int8 scales
    wq = _q6_k_values(wb[..., 0:128], wb[..., 128:192])                       # (N, nb, 16, 16)
    sc = wb[..., 192:208].view(np.int8).astype(np.float64)
    sub = _idot(wq, qy.reshape(T, nb, 16, 16))                                # (nb, 16, N, T)
    isum = np.einsum("bsnt,nbs->bnt", sub, sc).astype(f32)
    dx = _f16(wb[..., 208:210])
    acc = np.zeros((T, N), f32)
    for b in range(nb):           # (dx * dy) * isum
        acc += (dx[None, :, b] * dy[:, b, None]) * isum[b].T
    return acc


def quantize_activations(qtype, x):
    # x (T,K) float32 -> the activations in the vec_dot type of weight format `qtype`
    kind = VEC_DOT_TYPE[qtype]
    if kind == "Q8_0":
        return quantize_q8_0(x)
    if kind == "Q8_1":
        return quantize_q8_1(x)
    if kind == "Q8_K":
        return quantize_q8_k(x)
    return _to_f16(x) if kind == "F16" else _to_bf16(x)


def linear(x, w: QTensor, b, out, accumulate=False):
    # x (T,K) float32, w (N,K) QTensor, b (N,) or None, out (T,N): out (+)= x @ w.T + b
    _check_qtensor(w)
    N, K = w.shape
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise KernelInputError("x must be a 2D float32 numpy array")
    if x.shape[1] != K:
        raise KernelInputError(f"x has {x.shape[1]} features but {w.name or 'w'} takes {K}")
    T = x.shape[0]
    _check_out(out, (T, N))
    if b is not None and (not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.shape != (N,)):
        raise KernelInputError(f"b must be a float32 array of shape ({N},)")
    _check_disjoint(out, "out", x, "x")
    _check_disjoint(out, "out", w.data, "w's data")
    _check_disjoint(out, "out", b, "b")
    act = quantize_activations(w.qtype, np.ascontiguousarray(x))
    wb = _blocks(w)
    per_row = K if w.qtype in ("F16", "BF16") else wb.shape[1] * 16
    step = max(1, _ROWS_PER_CHUNK_VALUES // max(1, T * per_row))
    y = np.empty((T, N), np.float32)
    for n0 in range(0, N, step):
        y[:, n0:n0 + step] = _linear_blocks(w.qtype, wb[n0:n0 + step], act)
    if b is not None:
        y += b
    if accumulate:
        out += y
    else:
        out[...] = y
    return out
