"""NumPy reference kernels: the definition of every kernel's result.

Each native kernel (smallmind.kernels.native) has a twin here with the same name and
signature. Kernels are pure functions over float32 arrays that write into caller-owned
outputs (and return them); they know nothing of models. Inputs may be strided views.
Like the native kernels, each refuses an output that shares memory with another array of
the call (of any dtype) unless it is exactly an input it may overwrite in place.
"""

import numpy as np

from ..errors import KernelInputError

GELU_C = np.float32(np.sqrt(2.0 / np.pi))
# Deciding exactly whether two strided views share memory can take exponential time; past
# this much work the pair is refused as if it overlapped (as the native module does).
OVERLAP_MAX_WORK = 1 << 20


def _apart(arrays: dict, outputs: tuple, same_ok: dict | None = None) -> None:
    # arrays: name -> array or None; outputs: the names written; same_ok: output -> the
    # inputs it may be exactly (in place). Raises KernelInputError on any other shared memory.
    given = [(n, a) for n, a in arrays.items() if isinstance(a, np.ndarray)]
    for i, (oname, out) in enumerate(given):
        if oname not in outputs:
            continue
        for j, (name, other) in enumerate(given):
            if j == i or (j < i and name in outputs):
                continue
            allow = name in (same_ok or {}).get(oname, ())
            if allow and _same_array(out, other):
                continue
            try:
                shares = np.shares_memory(out, other, max_work=OVERLAP_MAX_WORK)
            except np.exceptions.TooHardError:
                shares = True
            if shares:
                if allow:
                    raise KernelInputError(f"{oname} must be {name} itself or not overlap it")
                raise KernelInputError(f"{oname} must not overlap {name}")


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.dtype == b.dtype
            and a.shape == b.shape and all(n <= 1 or s == t for n, s, t in zip(a.shape, a.strides, b.strides)))


def linear(x, w, b, out, accumulate=False):
    # x (T,K), w (N,K), b (N,) or None, out (T,N): out = x @ w.T + b, or out += that
    _apart({"x": x, "w": w, "b": b, "out": out}, ("out",))
    y = x @ w.T
    if b is not None:
        y += b
    if accumulate:
        out += y
    else:
        out[...] = y
    return out


def embedding(tokens, wte, wpe, pos0, out):
    # tokens (T,) int, wte (V,C), wpe (P,C) or None, out (T,C): out[t] = wte[tok[t]] + wpe[pos0+t]
    _apart({"tokens": tokens, "wte": wte, "wpe": wpe, "out": out}, ("out",))
    T = tokens.shape[0]
    if np.any(tokens < 0) or np.any(tokens >= wte.shape[0]):
        raise IndexError("token id out of range for the embedding table")
    out[...] = wte[tokens]
    if wpe is not None:
        if pos0 + T > wpe.shape[0]:
            raise IndexError("position beyond the position-embedding table")
        out += wpe[pos0:pos0 + T]
    return out


def embedding_backward(tokens, dout, dwte):
    # tokens (N,) int, dout (N,C), dwte (V,C): dwte[tok[n]] += dout[n]
    _apart({"tokens": tokens, "dout": dout, "dwte": dwte}, ("dwte",))
    np.add.at(dwte, tokens, dout)
    return dwte


def layer_norm(x, weight, bias, out, eps=1e-5, mean=None, rstd=None):
    # x (T,C), weight (C,), bias (C,), out (T,C); mean, rstd (T,) saved for backward if given
    _apart({"x": x, "weight": weight, "bias": bias, "out": out, "mean": mean, "rstd": rstd},
           ("out", "mean", "rstd"), {"out": ("x",)})
    m = x.mean(axis=-1)
    xc = x - m[:, None]
    r = 1.0 / np.sqrt((xc * xc).mean(axis=-1) + eps)
    out[...] = xc * r[:, None] * weight + bias
    if mean is not None:
        mean[...] = m
    if rstd is not None:
        rstd[...] = r
    return out


def layer_norm_backward(dout, x, weight, mean, rstd, dx, dweight, dbias):
    # dout, x, dx (T,C); weight, dweight, dbias (C,); mean, rstd (T,)
    # accumulates: dx += ..., dweight += ..., dbias += ...
    _apart({"dout": dout, "x": x, "weight": weight, "mean": mean, "rstd": rstd, "dx": dx, "dweight": dweight,
            "dbias": dbias}, ("dx", "dweight", "dbias"), {"dx": ("dout", "x")})
    xhat = (x - mean[:, None]) * rstd[:, None]
    dbias += dout.sum(axis=0)
    dweight += (dout * xhat).sum(axis=0)
    dxhat = dout * weight
    dx += rstd[:, None] * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                           - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx


def rms_norm(x, weight, out, eps=1e-6):
    # x (T,C), weight (C,), out (T,C): out = x / sqrt(mean(x^2) + eps) * weight
    # as ggml: float squares summed in double, the mean rounded to float, (x * r) * weight
    _apart({"x": x, "weight": weight, "out": out}, ("out",), {"out": ("x",)})
    mean = ((x * x).sum(axis=-1, dtype=np.float64) / x.shape[-1]).astype(np.float32)
    r = np.float32(1.0) / np.sqrt(mean + np.float32(eps))
    out[...] = x * r[:, None] * weight
    return out


def gelu(x, out):
    # x, out (...): tanh approximation (GPT-2)
    _apart({"x": x, "out": out}, ("out",), {"out": ("x",)})
    out[...] = 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x * x * x)))
    return out


def gelu_backward(x, dout, dx):
    # x, dout, dx (...): dx = dout * gelu'(x)
    _apart({"x": x, "dout": dout, "dx": dx}, ("dx",), {"dx": ("x", "dout")})
    u = GELU_C * (x + 0.044715 * x * x * x)
    t = np.tanh(u)
    du = GELU_C * (1.0 + 3.0 * 0.044715 * x * x)
    dx[...] = dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
    return dx


def silu(x, out):
    # x, out (...): x * sigmoid(x)
    _apart({"x": x, "out": out}, ("out",), {"out": ("x",)})
    out[...] = x / (1.0 + np.exp(-x))
    return out


def swiglu(gate, up, out):
    # gate, up, out (...): silu(gate) * up
    _apart({"gate": gate, "up": up, "out": out}, ("out",), {"out": ("gate", "up")})
    out[...] = gate / (1.0 + np.exp(-gate)) * up
    return out


def geglu(gate, up, out):
    # gate, up, out (...): gelu_tanh(gate) * up
    _apart({"gate": gate, "up": up, "out": out}, ("out",), {"out": ("gate", "up")})
    # through a temporary: out may be up itself, which gelu(gate, out) would overwrite first
    out[...] = gelu(gate, np.empty(np.shape(gate), np.float32)) * up
    return out


def softmax(x, out):
    # x, out (R,N): row-wise softmax
    _apart({"x": x, "out": out}, ("out",), {"out": ("x",)})
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    out[...] = e / e.sum(axis=-1, keepdims=True)
    return out


def _causal_softmax(scores, out, scale):
    # scores, out (..., T, T): row t sees columns j <= t; masked entries are 0 and never exponentiated
    T, S = scores.shape[-2:]
    allowed = np.arange(S)[None, :] <= np.arange(T)[:, None]
    s = np.where(allowed, scores * scale, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.where(allowed, np.exp(s - m), 0.0)
    out[...] = e / e.sum(axis=-1, keepdims=True)
    return out


def _softmax_backward(probs, dprobs, dscores, scale):
    # probs, dprobs, dscores (..., S): gradient through out = softmax(scale * scores)
    dscores[...] = scale * probs * (dprobs - (probs * dprobs).sum(axis=-1, keepdims=True))
    return dscores


def rope(x, pos0, theta, out, neox=False, freq_factors=None):
    # x, out (T,H,D), D even; freq_factors (D/2,) or None: rotate feature pairs by angle
    # (pos0+t) * theta^(-2i/D) / freq_factors[i]
    # neox=False pairs (2i, 2i+1); neox=True pairs (i, i + D/2)
    _apart({"x": x, "out": out, "freq_factors": freq_factors}, ("out",), {"out": ("x",)})
    T, H, D = x.shape
    inv = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    if freq_factors is not None:
        inv = inv / freq_factors.astype(np.float64)  # Llama 3's long-context frequency scaling
    ang = (pos0 + np.arange(T, dtype=np.float64))[:, None] * inv[None, :]
    cos = np.cos(ang).astype(np.float32)[:, None, :]
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    if neox:
        a, b = x[..., :D // 2].copy(), x[..., D // 2:].copy()
        out[..., :D // 2] = a * cos - b * sin
        out[..., D // 2:] = a * sin + b * cos
    else:
        a, b = x[..., 0::2].copy(), x[..., 1::2].copy()
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    return out


def kv_cache_store(k, v, k_cache, v_cache, pos0):
    # k, v (T,Hkv,D); k_cache, v_cache (Hkv,S_max,D) float32 or float16: cache[:, pos0+t] = k[t]
    # (a float16 cache holds k rounded to nearest even)
    _apart({"k": k, "v": v, "k_cache": k_cache, "v_cache": v_cache}, ("k_cache", "v_cache"))
    T = k.shape[0]
    if pos0 + T > k_cache.shape[1]:
        raise IndexError("KV cache is full")
    with np.errstate(over="ignore"):  # beyond the largest half is inf, as ggml's conversion gives
        k_cache[:, pos0:pos0 + T] = k.transpose(1, 0, 2)
        v_cache[:, pos0:pos0 + T] = v.transpose(1, 0, 2)


def attention(q, k_cache, v_cache, pos0, out, scale, window=0):
    # q, out (T,H,D); k_cache, v_cache (Hkv,S_max,D) holding positions 0..pos0+T-1.
    # Causal: query t (at position p = pos0+t) attends keys j <= p, and with a sliding window
    # (window > 0) only those with p - j < window. H is a multiple of Hkv (GQA).
    # A float16 cache is attended as llama.cpp's CPU backend does (attention_half).
    _apart({"q": q, "k_cache": k_cache, "v_cache": v_cache, "out": out}, ("out",))
    if k_cache.dtype == np.float16:
        return _attention_half(q, k_cache, v_cache, pos0, out, scale, window)
    T, H, D = q.shape
    Hkv = k_cache.shape[0]
    S = pos0 + T
    group = H // Hkv
    k = np.repeat(k_cache[:, :S], group, axis=0)  # (H,S,D)
    v = np.repeat(v_cache[:, :S], group, axis=0)
    scores = np.einsum("thd,hsd->hts", q, k)
    p, j = pos0 + np.arange(T)[:, None], np.arange(S)[None, :]
    allowed = (j <= p) & ((window <= 0) | (p - j < window))
    s = np.where(allowed, scores * scale, -np.inf)
    e = np.where(allowed, np.exp(s - s.max(axis=-1, keepdims=True)), 0.0)
    probs = e / e.sum(axis=-1, keepdims=True)
    out[...] = np.einsum("hts,hsd->thd", probs, v)
    return out


def _attention_half(q, k_cache, v_cache, pos0, out, scale, window):
    # q, out (T,H,D); k_cache, v_cache (Hkv,S_max,D) float16. ggml's mul_mat with an f16 matrix
    # rounds the other operand to f16 and sums in f32: KQ = K16 . f16(q); the softmax is exact
    # in f32 with the sum of exponentials in double, times 1/sum; KQV = V16 . f16(probs).
    T, H = q.shape[:2]
    S = pos0 + T
    group = H // k_cache.shape[0]
    k = np.repeat(k_cache[:, :S].astype(np.float32), group, axis=0)  # (H,S,D)
    v = np.repeat(v_cache[:, :S].astype(np.float32), group, axis=0)
    qh = q.astype(np.float16).astype(np.float32)
    scores = np.einsum("thd,hsd->hts", qh, k) * np.float32(scale)
    p, j = pos0 + np.arange(T)[:, None], np.arange(S)[None, :]
    allowed = (j <= p) & ((window <= 0) | (p - j < window))
    s = np.where(allowed, scores, np.float32(-np.inf))
    e = np.where(allowed, np.exp(s - s.max(axis=-1, keepdims=True)), np.float32(0.0))
    inv = (1.0 / e.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
    probs = (e * inv).astype(np.float16).astype(np.float32)
    out[...] = np.einsum("hts,hsd->thd", probs, v)
    return out


def _rows_positions(positions, B) -> list:
    # positions (B,) int32 or int64 -> B Python ints, each >= 0
    if not isinstance(positions, np.ndarray) or positions.dtype not in (np.int32, np.int64) \
            or positions.shape != (B,):
        raise KernelInputError(f"positions must be a ({B},) int32 or int64 array, one per row")
    if B and positions.min() < 0:
        raise KernelInputError(f"positions[{int(positions.argmin())}] must be >= 0, got {positions.min()}")
    return [int(p) for p in positions]


def _rows_caches(k_caches, v_caches, B, layer, positions, heads, D, written) -> None:
    # the B caches of each sequence: (n_layers, Hkv, S_max, D) float32 or float16, one dtype,
    # layer and each row's position inside them, heads equal to (written) or a multiple of Hkv
    if not all(isinstance(c, (list, tuple)) for c in (k_caches, v_caches)):
        raise KernelInputError("k_caches and v_caches must be sequences of arrays")
    if len(k_caches) != B or len(v_caches) != B:
        raise KernelInputError(f"k_caches and v_caches must hold one cache per row ({B})")
    if not isinstance(layer, (int, np.integer)) or layer < 0:
        raise KernelInputError(f"layer must be an integer >= 0, got {layer!r}")
    for b, (kc, vc, pos) in enumerate(zip(k_caches, v_caches, positions)):
        for name, c in ((f"k_caches[{b}]", kc), (f"v_caches[{b}]", vc)):
            if not isinstance(c, np.ndarray) or c.ndim != 4 or c.dtype not in (np.float32, np.float16):
                raise KernelInputError(f"{name} must be a 4D float32 or float16 array")
            if c.dtype != k_caches[0].dtype:
                raise KernelInputError(f"every cache must have the same dtype; {name} differs from k_caches[0]")
            if written and not c.flags.writeable:
                raise KernelInputError(f"{name} is read-only")
        n_layers, Hkv, S, d = kc.shape
        if vc.shape != kc.shape or d != D:
            raise KernelInputError(f"k_caches[{b}] and v_caches[{b}] must be one shape with head dim {D}")
        if layer >= n_layers:
            raise KernelInputError(f"layer {layer} is outside k_caches[{b}]'s {n_layers} layers")
        if (Hkv != heads) if written else (Hkv < 1 or heads % Hkv):
            raise KernelInputError(f"k_caches[{b}] has {Hkv} KV heads; the rows have {heads}")
        if pos >= S:
            raise KernelInputError(f"positions[{b}] = {pos} is beyond k_caches[{b}]'s length {S}")


def rope_rows(x, positions, theta, out, neox=False, freq_factors=None):
    # x, out (B,H,D), positions (B,) int: row b rotated as rope() at pos0 = positions[b]
    _apart({"x": x, "out": out, "freq_factors": freq_factors, "positions": positions}, ("out",), {"out": ("x",)})
    if x.ndim != 3 or out.shape != x.shape:
        raise KernelInputError(f"x and out must be one (B,H,D) shape, got {x.shape} and {out.shape}")
    for b, pos in enumerate(_rows_positions(positions, x.shape[0])):
        rope(x[b:b + 1], pos, theta, out[b:b + 1], neox, freq_factors)
    return out


def kv_cache_store_rows(k, v, k_caches, v_caches, layer, positions):
    # k, v (B,Hkv,D); k_caches, v_caches B arrays (n_layers,Hkv,S_max,D) float32 or float16:
    # k_caches[b][layer][:, positions[b]] = k[b] (v alike); no two rows write one slot
    if k.ndim != 3 or v.shape != k.shape:
        raise KernelInputError(f"k and v must be one (B,Hkv,D) shape, got {k.shape} and {v.shape}")
    B, Hkv, D = k.shape
    pos = _rows_positions(positions, B)
    _rows_caches(k_caches, v_caches, B, layer, pos, Hkv, D, True)
    caches = [(f"k_caches[{b}]", c) for b, c in enumerate(k_caches)] + \
             [(f"v_caches[{b}]", c) for b, c in enumerate(v_caches)]
    for i, (name, c) in enumerate(caches):
        _apart({name: c, "k": k, "v": v, "positions": positions}, (name,))
        for j in range(i + 1, 2 * B):
            other, d = caches[j]
            if not _same_array(c, d):
                _apart({name: c, other: d}, (name,))
            elif pos[i % B] == pos[j % B]:
                raise KernelInputError(f"{name} and {other} are one array, written at the same position {pos[j % B]}")
    for b in range(B):
        kv_cache_store(k[b:b + 1], v[b:b + 1], k_caches[b][layer], v_caches[b][layer], pos[b])


def attention_rows(q, k_caches, v_caches, layer, positions, out, scale, window=0):
    # q, out (B,H,D); k_caches, v_caches B arrays (n_layers,Hkv,S_max,D): row b as attention()
    # over its own caches' layer at pos0 = positions[b]
    if q.ndim != 3 or out.shape != q.shape:
        raise KernelInputError(f"q and out must be one (B,H,D) shape, got {q.shape} and {out.shape}")
    if window < 0:
        raise KernelInputError(f"window must be >= 0 (0: no sliding window), got {window}")
    B, H, D = q.shape
    pos = _rows_positions(positions, B)
    _rows_caches(k_caches, v_caches, B, layer, pos, H, D, False)
    arrays = {"q": q, "positions": positions, "out": out}
    arrays.update({f"k_caches[{b}]": c for b, c in enumerate(k_caches)})
    arrays.update({f"v_caches[{b}]": c for b, c in enumerate(v_caches)})
    _apart(arrays, ("out",))
    for b in range(B):
        attention(q[b:b + 1], k_caches[b][layer], v_caches[b][layer], pos[b], out[b:b + 1], scale, window)
    return out


def _train_attention_dims(qkv, probs, mask, rows: dict, outputs: tuple):
    # qkv (B*T,3*H*D), probs (B,H,T,T), mask like probs or None, rows: name -> (array, width in
    # units of H*D), outputs: the names written -> B, H, T, D; refuses what the native kernel refuses
    for name, a in {"qkv": qkv, "probs": probs, "mask": mask, **{n: a for n, (a, _) in rows.items()}}.items():
        if a is None and name == "mask":
            continue
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise KernelInputError(f"{name} must be a float32 numpy array, got {getattr(a, 'dtype', type(a).__name__)}")
        if name in outputs and not a.flags.writeable:
            raise KernelInputError(f"{name} is read-only")
    if probs.ndim != 4 or qkv.ndim != 2:
        raise KernelInputError(f"probs must be 4D (B,H,T,T) and qkv 2D (B*T,3C), got {probs.ndim}D and {qkv.ndim}D")
    B, H, T, S = probs.shape
    if min(B, H, T) < 1 or S != T:
        raise KernelInputError(f"probs must be (B, H, T, T) with B, H and T at least 1, got {probs.shape}")
    if qkv.shape[0] != B * T or qkv.shape[1] < 3 * H or qkv.shape[1] % (3 * H):
        raise KernelInputError(f"qkv must be (B*T, 3*H*D) = ({B * T}, 3*{H}*D) for probs {probs.shape}, got {qkv.shape}")
    D = qkv.shape[1] // (3 * H)
    for name, (a, k) in rows.items():
        if a.shape != (B * T, k * H * D):
            raise KernelInputError(f"{name} must be ({B * T}, {k * H * D}) for qkv {qkv.shape}, got {a.shape}")
    if mask is not None and mask.shape != probs.shape:
        raise KernelInputError(f"mask shape {mask.shape} does not match probs shape {probs.shape}")
    return B, H, T, D


def _train_heads(x, B, T, H, D):
    # x (B*T, k*H*D) -> (k,B,H,T,D) view
    return x.reshape(B, T, -1, H, D).transpose(2, 0, 3, 1, 4)


def _merge_heads(y, out):
    # y (B,H,T,D) -> out (B*T, H*D) rows, heads side by side
    B, H, T, D = y.shape
    out[...] = y.transpose(0, 2, 1, 3).reshape(B * T, H * D)


def attention_train_forward(qkv, probs, out, scale, mask=None):
    # qkv (B*T,3C) rows [q|k|v], heads of D = C/H columns in each third; probs (B,H,T,T): causal
    # softmax of scale * q k^T; out (B*T,C): (probs [* mask]) v, heads merged (probs stays undropped)
    B, H, T, D = _train_attention_dims(qkv, probs, mask, {"out": (out, 1)}, ("probs", "out"))
    scale = _number("scale", scale)
    _apart({"qkv": qkv, "probs": probs, "out": out, "mask": mask}, ("probs", "out"))
    q, k, v = _train_heads(qkv, B, T, H, D)
    np.matmul(q, k.transpose(0, 1, 3, 2), out=probs)
    _causal_softmax(probs, probs, scale)
    _merge_heads((probs if mask is None else probs * mask) @ v, out)
    return out


def attention_train_backward(dout, qkv, probs, dqkv, scale, mask=None):
    # dout (B*T,C), qkv (B*T,3C), probs (B,H,T,T) (its causal part is read), mask like probs or None
    # -> dqkv (B*T,3C) written: dv = P'^T dout (P' = probs [* mask]), dS = the softmax's backward of
    # dP = dout v^T [* mask], dq = dS k, dk = dS^T q
    B, H, T, D = _train_attention_dims(qkv, probs, mask, {"dout": (dout, 1), "dqkv": (dqkv, 3)}, ("dqkv",))
    scale = _number("scale", scale)
    _apart({"dout": dout, "qkv": qkv, "probs": probs, "dqkv": dqkv, "mask": mask}, ("dqkv",))
    q, k, v = _train_heads(qkv, B, T, H, D)
    datt = _train_heads(dout, B, T, H, D)[0]
    p = np.tril(probs)
    mask = None if mask is None else np.tril(mask)
    dropped = p if mask is None else p * mask
    dp = datt @ v.transpose(0, 1, 3, 2)
    if mask is not None:
        dp *= mask
    ds = _softmax_backward(p, dp, np.empty_like(dp), scale)
    grads = [ds @ k, ds.transpose(0, 1, 3, 2) @ q, dropped.transpose(0, 1, 3, 2) @ datt]
    for i, g in enumerate(grads):
        _merge_heads(g, dqkv[:, i * H * D:(i + 1) * H * D])
    return dqkv


def _number(name, x):
    # x -> float, or KernelInputError naming the argument (as the native kernels read numbers)
    if isinstance(x, (str, bytes)):
        raise KernelInputError(f"{name} must be a number, got {type(x).__name__}")
    try:
        return float(x)
    except (TypeError, ValueError):
        raise KernelInputError(f"{name} must be a number, got {type(x).__name__}") from None


def cross_entropy(logits, targets, losses, dlogits=None, dscale=1.0):
    # logits (N,V), targets (N,) int, losses (N,); dlogits (N,V) or None (may alias logits):
    # losses[n] = -log softmax(logits[n])[targets[n]]; dlogits = (softmax - onehot) * dscale
    _apart({"logits": logits, "targets": targets, "losses": losses, "dlogits": dlogits}, ("losses", "dlogits"),
           {"dlogits": ("logits",)})
    m = logits.max(axis=-1, keepdims=True)
    e = np.exp(logits - m)
    z = e.sum(axis=-1, keepdims=True)
    rows = np.arange(logits.shape[0])
    losses[...] = (np.log(z[:, 0]) + m[:, 0]) - logits[rows, targets]
    if dlogits is not None:
        p = e / z
        p[rows, targets] -= 1.0
        dlogits[...] = p * dscale
    return losses


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    # param, grad, m, v (N,) updated in place; step counts from 1 (bias correction)
    _apart({"param": param, "grad": grad, "m": m, "v": v}, ("param", "m", "v"))
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    mhat = m / (1.0 - beta1 ** step)
    vhat = v / (1.0 - beta2 ** step)
    param -= lr * (mhat / (np.sqrt(vhat) + eps) + weight_decay * param)
    return param


def sample_softmax(logits, scale, u, probs):
    # logits (V,) float32, probs (V,) float32 out -> the token drawn from softmax(scale * logits)
    # at u in [0, 1): probs = exp(scale * logits - max) (unnormalised) and the token is the first
    # whose running sum (in float64) exceeds u * sum(probs), so one of probability 0 never is
    if logits.ndim != 1 or probs.shape != logits.shape or logits.shape[0] < 1:
        raise KernelInputError(f"logits and probs must be one (V,) shape with V >= 1, got {logits.shape} "
                               f"and {probs.shape}")
    if logits.dtype != np.float32 or probs.dtype != np.float32:
        raise KernelInputError("logits and probs must be float32")
    if not 0.0 < scale <= np.finfo(np.float32).max:
        raise KernelInputError(f"scale must be a positive finite number, got {scale!r}")
    if not 0.0 <= u < 1.0:
        raise KernelInputError(f"u must be in [0, 1), got {u!r}")
    _apart({"logits": logits, "probs": probs}, ("probs",))
    x = logits * np.float32(scale)
    with np.errstate(invalid="ignore"):
        np.exp(x - x.max(), out=probs)
    running = np.cumsum(probs, dtype=np.float64)
    total = running[-1]
    if not 0.0 < total <= np.finfo(np.float64).max:
        raise KernelInputError("logits must hold no NaN or +inf, and at least one finite value")
    token = int(np.searchsorted(running, u * total, side="right"))
    if token == logits.shape[0]:   # rounding: the last token of nonzero probability
        token = int(np.flatnonzero(probs)[-1])
    return token


def linear_gelu(x, w, b, pre, out):
    # x (T,K), w (N,K), b (N,) or None, pre, out (T,N): pre = x @ w.T + b, out = gelu(pre)
    _apart({"x": x, "w": w, "b": b, "pre": pre, "out": out}, ("pre", "out"))
    linear(x, w, b, pre)
    return gelu(pre, out)


def linear_residual(x, w, b, resid, out):
    # x (T,K), w (N,K), b (N,) or None, resid, out (T,N): out = resid + x @ w.T + b
    _apart({"x": x, "w": w, "b": b, "resid": resid, "out": out}, ("out",))
    linear(x, w, b, out)
    out += resid
    return out


def linear_backward_input(dout, w, dx, scale=1.0, gelu_x=None):
    # dout (T,M), w (M,K), dx (T,K), gelu_x (T,K) or None: dx = scale * dout @ w, times
    # gelu'(gelu_x) when given (the gradient reaching a GELU's input through the layer after it)
    _apart({"dout": dout, "w": w, "dx": dx, "gelu_x": gelu_x}, ("dx",))
    np.matmul(dout, w, out=dx)
    if scale != 1.0:
        dx *= np.float32(scale)
    if gelu_x is not None:
        gelu_backward(gelu_x, dx, dx)
    return dx


def linear_backward_weight(dout, x, dw, db, scale=1.0):
    # dout (T,M), x (T,K), dw (M,K), db (M,) or None: dw += scale * dout.T @ x and
    # db += scale * dout summed over rows (accumulated, as gradients are)
    _apart({"dout": dout, "x": x, "dw": dw, "db": db}, ("dw", "db"))
    dw += np.float32(scale) * (dout.T @ x)
    if db is not None:
        db += np.float32(scale) * dout.sum(axis=0)
    return dw


def round_bf16(x, out):
    # x, out (...): the nearest BF16 value (ties to even) kept as float32, the low 16 bits zero;
    # NaN stays NaN and values beyond BF16's range round to inf, as the hardware conversion does
    _apart({"x": x, "out": out}, ("out",), {"out": ("x",)})
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    quiet = (u | np.uint32(0x00400000)) & np.uint32(0xFFFF0000)
    out[...] = np.where(np.isnan(x), quiet, rounded).view(np.float32)
    return out
