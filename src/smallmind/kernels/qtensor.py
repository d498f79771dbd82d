"""QTensor: a weight matrix kept in one of GGUF's block formats, used in place.

A QTensor is what a model holds for a quantized (or 16-bit) weight: the packed bytes as they
lie in the file (a read-only memory map is fine), the format's name and the logical shape
(rows, cols), rows being the output features of a linear layer (PyTorch's layout, as for the
float32 arrays). It flows through the same kernel entry points as a float32 array:
`kernels.linear(x, w, b, out)`, `kernels.embedding(tokens, w, None, 0, out)` and
`kernels.dequantize(w, out)`; only the kernels know what the bytes mean.

Formats (GGML names): F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (blocks of 32 values) and Q4_K,
Q5_K, Q6_K (super-blocks of 256). Float32 weights are plain numpy arrays, never QTensors.
"""

import numpy as np

from ..errors import KernelInputError

# name -> (GGML type id, values per block, bytes per block)
QTYPES = {
    "F16": (1, 1, 2),
    "BF16": (30, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
}
QTYPE_BY_ID = {type_id: name for name, (type_id, _, _) in QTYPES.items()}


def row_bytes(qtype: str, cols: int) -> int:
    """Bytes of one row of `cols` values in format `qtype` (cols must be a whole number of blocks)."""
    _, block, size = QTYPES[qtype]
    return cols // block * size


class QTensor:
    """rows x cols values in block format `qtype`; `data` is uint8 (rows, row_bytes(qtype, cols))."""

    __slots__ = ("qtype", "shape", "data", "name")

    def __init__(self, qtype: str, shape: tuple[int, int], data: np.ndarray, name: str = ""):
        if qtype not in QTYPES:
            raise KernelInputError(f"{name or 'tensor'}: unknown block format {qtype!r}; "
                                   f"known: {', '.join(QTYPES)}")
        if len(shape) != 2 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
                                  for n in shape):
            raise KernelInputError(f"{name or 'tensor'}: shape must be two positive integers, got {shape!r}")
        rows, cols = int(shape[0]), int(shape[1])
        block = QTYPES[qtype][1]
        if cols % block:
            raise KernelInputError(f"{name or 'tensor'}: {cols} columns is not a whole number of "
                                   f"{qtype} blocks of {block}")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise KernelInputError(f"{name or 'tensor'}: data must be a uint8 numpy array")
        want = (rows, row_bytes(qtype, cols))
        if data.shape != want:
            raise KernelInputError(f"{name or 'tensor'}: data shape {data.shape} does not hold a "
                                   f"{rows} x {cols} {qtype} tensor {want}")
        if not data.flags.c_contiguous:
            raise KernelInputError(f"{name or 'tensor'}: data must be C-contiguous")
        self.qtype = qtype
        self.shape = (rows, cols)
        self.data = data
        self.name = name

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def bits_per_weight(self) -> float:
        _, block, size = QTYPES[self.qtype]
        return 8.0 * size / block

    def rows(self, start: int, stop: int) -> "QTensor":
        """Rows start..stop-1 as a QTensor sharing this one's bytes."""
        return QTensor(self.qtype, (stop - start, self.shape[1]), self.data[start:stop], self.name)

    def __repr__(self) -> str:
        return f"QTensor({self.name!r}, {self.qtype}, {self.shape[0]}x{self.shape[1]})"
