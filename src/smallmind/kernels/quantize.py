"""Quantizers: a float32 matrix into one of GGUF's block formats, as a QTensor.

    q = quantize(w, "Q4_K")          # w (rows, cols) float32 -> QTensor (rows, cols)

Each format follows llama.cpp's reference quantizer (quantize_row_*_ref in ggml-quants.c),
vectorized over blocks, and gives its bytes exactly: the 32-value formats (Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1) and F16/BF16 are also what the `gguf` package's quantizers give; the K formats
(Q4_K, Q5_K, Q6_K), which `gguf` cannot write, search their scales as llama.cpp does without an
importance matrix (make_qkx2_quants for Q4_K/Q5_K, make_qx_quants for Q6_K), summing in float32
left to right as its C loops do.

A matrix is quantized in slices of rows, so that a large embedding table never needs the
search's temporaries for all of its blocks at once.
"""

import numpy as np

from ..errors import KernelInputError
from .qtensor import QTYPES, QTensor

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)
SLICE_VALUES = 1 << 20  # values quantized per slice of rows


def quantize(w, qtype: str, name: str = "") -> QTensor:
    # w (rows, cols) float32 -> QTensor (rows, cols) in block format qtype
    """The QTensor of `w` in `qtype` (F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)."""
    label = name or "tensor"
    if qtype not in QUANTIZERS:
        raise KernelInputError(f"{label}: cannot quantize to {qtype!r}; known: {', '.join(QUANTIZERS)}")
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise KernelInputError(f"{label}: quantize takes a non-empty 2-D matrix, got shape {w.shape}")
    if w.dtype.kind != "f":
        raise KernelInputError(f"{label}: quantize takes floating-point values, got {w.dtype}")
    rows, cols = w.shape
    _, block, size = QTYPES[qtype]
    if cols % block:
        raise KernelInputError(f"{label}: {cols} columns is not a whole number of {qtype} blocks of {block}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise KernelInputError(f"{label}: holds NaN or infinite values; it cannot be quantized")
    data = np.empty((rows, cols // block * size), np.uint8)
    step = max(1, SLICE_VALUES // cols)
    for r in range(0, rows, step):
        part = w[r:r + step]
        data[r:r + step] = QUANTIZERS[qtype](part.reshape(-1, block)).reshape(part.shape[0], -1)
    return QTensor(qtype, (rows, cols), data, name)


def _f16_bytes(v):
    # v (n, k) float32 -> (n, 2k) uint8: IEEE half, round to nearest even
    return np.ascontiguousarray(v.astype(np.float16)).view(np.uint8)


def _f16(b):
    # (n, 1) float32 -> the same values rounded through half precision
    return b.astype(np.float16).astype(np.float32)


def _recip(d):
    # 1/d where d != 0, else 0 (an all-zero block)
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _abs_max_signed(x):
    # x (n, k) -> (n, 1): the value of largest magnitude, with its sign (the first on a tie)
    return np.take_along_axis(x, np.abs(x).argmax(axis=-1)[:, None], axis=-1)


def _truncate(v, top):
    # llama.cpp's (int8_t)(v) then MIN(top, .): v is never below zero here
    return np.minimum(np.trunc(v), top).astype(np.uint8)


def _pack_nibbles(q):
    # q (n, 32) in 0..15 -> (n, 16): value j in the low nibble, value j+16 in the high one
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _high_bits(q):
    # q (n, 32) in 0..31 -> (n, 4): bit 4 of value j as bit j of a little-endian uint32
    return np.packbits((q >> 4).astype(np.uint8), axis=-1, bitorder="little")


# ------------------------------------------------------------------------- 16-bit formats

def _f16_blocks(x):
    # x (n, 1) float32 -> (n, 2) uint8
    return _f16_bytes(x)


def _bf16_blocks(x):
    # x (n, 1) float32 -> (n, 2) uint8: round to nearest even, NaN kept quiet (ggml_compute_fp32_to_bf16)
    u = x.view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    quiet = (u >> 16) | 64
    return np.where(nan, quiet, rounded).astype(np.uint16).view(np.uint8)


# ------------------------------------------------------------------------- 32-value formats

def _q8_0_blocks(x):
    # x (n, 32) -> (n, 34): f16 d, 32 int8; d = max|x| / 127, q = round half away from zero
    d = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)
    v = x * _recip(d)
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.concatenate([_f16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=-1)


def _q4_0_blocks(x):
    # x (n, 32) -> (n, 18): f16 d, 16 bytes of nibbles; d = max / -8, q = trunc(x/d + 8.5)
    d = _abs_max_signed(x) / np.float32(-8)
    q = _truncate(x * _recip(d) + np.float32(8.5), 15)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=-1)


def _q4_1_blocks(x):
    # x (n, 32) -> (n, 20): f16 d, f16 min, nibbles; d = (max - min) / 15
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    q = _truncate((x - lo) * _recip(d) + np.float32(0.5), 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=-1)


def _q5_0_blocks(x):
    # x (n, 32) -> (n, 22): f16 d, 4 bytes of fifth bits, nibbles; d = max / -16
    d = _abs_max_signed(x) / np.float32(-16)
    q = _truncate(x * _recip(d) + np.float32(16.5), 31)
    return np.concatenate([_f16_bytes(d), _high_bits(q), _pack_nibbles(q)], axis=-1)


def _q5_1_blocks(x):
    # x (n, 32) -> (n, 24): f16 d, f16 min, fifth bits, nibbles; d = (max - min) / 31
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    d = (hi - lo) / np.float32(31)
    q = _truncate((x - lo) * _recip(d) + np.float32(0.5), 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _high_bits(q), _pack_nibbles(q)], axis=-1)


# ------------------------------------------------------------------------- K formats

def _seqsum(v):
    # v (g, k) float32 -> (g,): summed left to right in float32, as the C loops do (NumPy's
    # pairwise sum would round differently and move a few scales by their last bit)
    return np.cumsum(v, axis=1, dtype=np.float32)[:, -1]


def _nearest(v, lo, hi):
    # llama.cpp's nearest_int (round half to even) clamped to lo..hi
    return np.clip(np.rint(v), lo, hi)


def _scale_min_search(x, w, nmax, rmin, rdelta, nstep):
    # x, w (g, 32) float32 -> scale (g,), min (g,) >= 0 and levels L (g, 32) in 0..nmax, with
    # x ~ scale * L - min: make_qkx2_quants (weighted least squares over nstep+1 trial scales)
    f32 = np.float32
    lo = np.minimum(x.min(axis=1), f32(0))
    hi = x.max(axis=1)
    flat = hi == lo
    span = np.where(flat, f32(1), hi - lo)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    iscale = f32(nmax) / span
    scale = f32(1) / iscale
    L = _nearest(iscale[:, None] * (x - lo[:, None]), 0, nmax).astype(f32)
    best = _seqsum(w * np.square(scale[:, None] * L + lo[:, None] - x))
    for step in range(nstep + 1):
        # llama.cpp measures each trial from the best min found so far (and hi - that min)
        span = np.where(flat, f32(1), hi - lo)
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / span
        Laux = _nearest(iscale[:, None] * (x - lo[:, None]), 0, nmax).astype(f32)
        sum_l = _seqsum(w * Laux)
        sum_l2 = _seqsum(w * Laux * Laux)
        sum_xl = _seqsum(w * Laux * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, f32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        positive = this_min > 0
        this_min = np.where(positive, f32(0), this_min)
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        err = _seqsum(w * np.square(this_scale[:, None] * Laux + this_min[:, None] - x))
        better = ok & (err < best)
        L = np.where(better[:, None], Laux, L)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        lo = np.where(better, this_min, lo)
    scale = np.where(flat, f32(0), scale)
    L = np.where(flat[:, None], f32(0), L)
    return scale.astype(f32), (-lo).astype(f32), L


def _pack_k_scales(ls, lm):
    # ls, lm (n, 8) in 0..63 -> (n, 12): the 6-bit scales and mins of Q4_K/Q5_K
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _k_scaled_levels(x, nmax, rmin, rdelta, nstep):
    # x (n, 256) -> d, dmin (n, 1) float32 as stored (f16), packed scales (n, 12) and
    # levels L (n, 256) in 0..nmax: the part Q4_K and Q5_K share
    f32 = np.float32
    n = x.shape[0]
    groups = x.reshape(n * 8, 32)
    av = np.sqrt(_seqsum(np.square(groups)) / f32(32))
    weights = av[:, None] + np.abs(groups)
    scales, mins, L = _scale_min_search(groups, weights, nmax, rmin, rdelta, nstep)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale = np.maximum(scales.max(axis=1), f32(0))
    max_min = np.maximum(mins.max(axis=1), f32(0))
    inv_scale = np.where(max_scale > 0, f32(63) / np.where(max_scale > 0, max_scale, f32(1)), f32(0))
    inv_min = np.where(max_min > 0, f32(63) / np.where(max_min > 0, max_min, f32(1)), f32(0))
    ls = np.minimum(np.rint(inv_scale[:, None] * scales), 63)
    lm = np.minimum(np.rint(inv_min[:, None] * mins), 63)
    d = _f16((max_scale / f32(63))[:, None])
    dmin = _f16((max_min / f32(63))[:, None])
    dd = (d * ls.astype(f32)).reshape(n * 8, 1)
    dm = (dmin * lm.astype(f32)).reshape(n * 8, 1)
    # a group whose scale rounds to zero keeps the levels of the search
    requant = _nearest((groups + dm) / np.where(dd == 0, f32(1), dd), 0, nmax)
    L = np.where(dd == 0, L, requant).astype(np.uint8).reshape(n, QK_K)
    return d, dmin, _pack_k_scales(ls, lm), L


def _q4_k_blocks(x):
    # x (n, 256) -> (n, 144): f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles
    d, dmin, scales, L = _k_scaled_levels(x, 15, -1.0, 0.1, 20)
    L = L.reshape(-1, 4, 2, 32)  # 4 chunks of 64: values l and l+32 share a byte
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, qs], axis=-1)


def _q5_k_blocks(x):
    # x (n, 256) -> (n, 176): f16 d, f16 dmin, scales, 32 bytes of fifth bits, 128 of nibbles
    d, dmin, scales, L = _k_scaled_levels(x, 31, -0.5, 0.1, 15)
    L = L.reshape(-1, 4, 2, 32)
    qs = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    high = (L >> 4).astype(np.uint8)                          # (n, 4, 2, 32)
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)  # chunk c, half h -> 2c+h
    qh = (high << shifts[None, :, :, None]).sum(axis=(1, 2), dtype=np.uint32).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, qh, qs], axis=-1)


def _symmetric_search(x, nmax):
    # x (g, 16) -> scale (g,) and levels L (g, 16) in 0..2*nmax-1 with x ~ scale * (L - nmax):
    # make_qx_quants with weights x^2 (rmse_type 1), trying 19 scales around -nmax / max
    f32 = np.float32
    mx = _abs_max_signed(x)[:, 0]
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, f32(1), mx)
    w = x * x

    def trial(iscale):
        l = _nearest(iscale[:, None] * x, -nmax, nmax - 1).astype(f32)
        return l, _seqsum(w * x * l), _seqsum(w * l * l)

    L, sumlx, suml2 = trial(f32(-nmax) / mx)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0)).astype(f32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = trial(-(f32(nmax) + f32(0.1) * f32(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(better, sumlx / suml2, scale).astype(f32)
        best = np.where(better, scale * sumlx, best)
        L = np.where(better[:, None], l, L)
    # an all-zero group: scale 0 and levels 0 (not nmax), as llama.cpp leaves them
    L = np.where(zero[:, None], f32(0), L + f32(nmax))
    return np.where(zero, f32(0), scale), L


def _q6_k_blocks(x):
    # x (n, 256) -> (n, 210): 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, f16 d
    f32 = np.float32
    n = x.shape[0]
    groups = x.reshape(n * 16, 16)
    scales, L_search = _symmetric_search(groups, 32)
    scales = scales.reshape(n, 16)
    max_scale = _abs_max_signed(scales)[:, 0]
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = f32(-128) / np.where(empty, f32(1), max_scale)
    d = _f16((f32(1) / iscale)[:, None])
    sc = np.minimum(np.rint(iscale[:, None] * scales), 127).astype(np.int8)
    dd = (d * sc.astype(f32)).reshape(n * 16, 1)
    # a group whose scale rounds to zero keeps the search's levels (they dequantize to zero anyway)
    levels = _nearest(groups / np.where(dd == 0, f32(1), dd), -32, 31) + f32(32)
    L = np.where(dd == 0, L_search, levels).astype(np.uint8).reshape(n, 2, 4, 32)  # half, quarter, l
    low = L & 0xF
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6))
    out = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), _f16_bytes(d)], axis=-1)
    out[empty] = 0  # llama.cpp writes an all-zero block when every scale is (near) zero
    return out


QUANTIZERS = {
    "F16": _f16_blocks,
    "BF16": _bf16_blocks,
    "Q8_0": _q8_0_blocks,
    "Q4_0": _q4_0_blocks,
    "Q4_1": _q4_1_blocks,
    "Q5_0": _q5_0_blocks,
    "Q5_1": _q5_1_blocks,
    "Q4_K": _q4_k_blocks,
    "Q5_K": _q5_k_blocks,
    "Q6_K": _q6_k_blocks,
}
