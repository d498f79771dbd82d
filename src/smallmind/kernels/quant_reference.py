"""NumPy twins of the quantized-weight kernels (QTensor weights).

BOOTSTRAP: dequantize through the gguf package until the quant kernels land; the kernels
issue replaces this file with our own block decoders and the integer-path twins.
"""

import numpy as np

from . import reference
from .qtensor import QTYPES, QTensor


def dequantize(w: QTensor, out: np.ndarray) -> np.ndarray:
    # w (N,K) QTensor, out (N,K) float32
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    out[...] = gguf_dequantize(w.data, GGMLQuantizationType(QTYPES[w.qtype][0])).reshape(w.shape)
    return out


def linear(x, w: QTensor, b, out, accumulate=False):
    # x (T,K), w (N,K) QTensor, b (N,) or None, out (T,N)
    return reference.linear(x, dequantize(w, np.empty(w.shape, np.float32)), b, out, accumulate)


def embedding(tokens, w: QTensor, wpe, pos0, out):
    # tokens (T,) int, w (V,C) QTensor, wpe (P,C) or None, out (T,C)
    if np.any(tokens < 0) or np.any(tokens >= w.shape[0]):
        raise IndexError("token id out of range for the embedding table")
    for t, tok in enumerate(tokens):
        dequantize(w.rows(int(tok), int(tok) + 1), out[t:t + 1])
    if wpe is not None:
        out += wpe[pos0:pos0 + tokens.shape[0]]
    return out
