"""Writing a GGUF file atomically, one tensor at a time.

    write_gguf(path, "gpt2", metadata, tensors, force=False)

`metadata` is (key, value) pairs, or (key, value, GGUFValueType) where the type must be
exact; `tensors` are TensorPlan records (name, stored format, shape and a function producing
the array or QTensor), so that a large model is converted tensor by tensor and never held
whole in memory. The file is written to a hidden temporary file beside the target, synced,
then renamed over it: an error or an interrupt at any point leaves no partial file, and the
target is replaced only by a complete one. An existing target is refused unless `force`.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from ..errors import SmallMindError
from ..kernels.qtensor import QTYPES, QTensor, row_bytes
from .string_array import StringArray


@dataclass
class TensorPlan:
    name: str
    qtype: str                  # "F32" or a QTYPES name
    shape: tuple                # PyTorch order (rows, cols) or (n,)
    produce: Callable[[], object]  # -> float32 ndarray (F32) or QTensor of qtype

    @property
    def nbytes(self) -> int:
        if self.qtype == "F32":
            return 4 * int(np.prod(self.shape))
        rows = int(np.prod(self.shape[:-1]))
        return rows * row_bytes(self.qtype, self.shape[-1])


def check_output_path(path, force: bool) -> Path:
    """The output path, refused before any work if it cannot or may not be written."""
    path = Path(path)
    if path.is_dir():
        raise SmallMindError(f"the output {path} is a directory; give a file name such as {path / 'model.gguf'}")
    if not path.parent.is_dir():
        raise SmallMindError(f"the output directory {path.parent} does not exist")
    if path.exists() and not force:
        raise SmallMindError(f"{path} already exists; pass --force to replace it")
    if not os.access(path.parent, os.W_OK):
        raise SmallMindError(f"the output directory {path.parent} is not writable")
    return path


_ARRAY_TYPES = {
    "u1": GGUFValueType.UINT8, "i1": GGUFValueType.INT8, "u2": GGUFValueType.UINT16,
    "i2": GGUFValueType.INT16, "u4": GGUFValueType.UINT32, "i4": GGUFValueType.INT32,
    "u8": GGUFValueType.UINT64, "i8": GGUFValueType.INT64, "f4": GGUFValueType.FLOAT32,
    "f8": GGUFValueType.FLOAT64, "b1": GGUFValueType.BOOL,
}


def _value_type(key: str, value):
    # the GGUF type of a metadata value read back by GGUFFile (which keeps numpy arrays' dtypes)
    if isinstance(value, bool):
        return GGUFValueType.BOOL, None
    if isinstance(value, str):
        return GGUFValueType.STRING, None
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32, None
    if isinstance(value, (int, np.integer)):
        # llama.cpp reads its integer keys as uint32 (and checks the type)
        if value < 0:
            return GGUFValueType.INT32, None
        return (GGUFValueType.UINT32 if value < 1 << 32 else GGUFValueType.UINT64), None
    if isinstance(value, np.ndarray) and value.ndim == 1:
        if value.dtype.str.lstrip("<|=") not in _ARRAY_TYPES or value.size == 0:
            raise SmallMindError(f"metadata {key!r}: cannot store an array of {value.size} {value.dtype} in GGUF")
        return GGUFValueType.ARRAY, _ARRAY_TYPES[value.dtype.str.lstrip("<|=")]
    if isinstance(value, (list, tuple, StringArray)) and value and all(isinstance(v, str) for v in value):
        return GGUFValueType.ARRAY, GGUFValueType.STRING
    raise SmallMindError(f"metadata {key!r}: cannot store a value of type {type(value).__name__} in GGUF")


def write_gguf(path, arch: str, metadata, tensors: list[TensorPlan], *, force: bool = False,
               progress=None) -> int:
    """Write the file; returns its size in bytes. `progress(plan)` is called after each tensor."""
    path = check_output_path(path, force)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = GGUFWriter(None, arch)
    for item in metadata:
        key, value = item[0], item[1]
        if key == "general.architecture":
            continue
        vtype, sub = (item[2], None) if len(item) == 3 else _value_type(key, value)
        if isinstance(value, (np.ndarray, StringArray)):
            value = list(value) if isinstance(value, StringArray) else value.tolist()
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for plan in tensors:
        if plan.qtype == "F32":
            writer.add_tensor_info(plan.name, plan.shape, np.dtype(np.float32), plan.nbytes)
        else:
            byte_shape = (*plan.shape[:-1], row_bytes(plan.qtype, plan.shape[-1]))
            writer.add_tensor_info(plan.name, byte_shape, np.dtype(np.uint8), plan.nbytes,
                                   raw_dtype=GGMLQuantizationType(QTYPES[plan.qtype][0]))
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for plan in tensors:
            writer.write_tensor_data(_stored_bytes(plan))
            if progress is not None:
                progress(plan)
        writer.flush()
        os.fsync(writer.fout[0].fileno())
        writer.close()
        os.replace(tmp, path)
    except BaseException as e:
        writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise SmallMindError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path.stat().st_size


def _stored_bytes(plan: TensorPlan) -> np.ndarray:
    # what the plan's producer made, checked against the plan: float32 values or a QTensor's bytes
    t = plan.produce()
    if plan.qtype == "F32":
        t = np.ascontiguousarray(t, dtype=np.float32)
        if t.shape != tuple(plan.shape):
            raise SmallMindError(f"tensor {plan.name!r}: produced shape {t.shape}, planned {plan.shape}")
        return t
    if not isinstance(t, QTensor) or t.qtype != plan.qtype or t.data.nbytes != plan.nbytes:
        raise SmallMindError(f"tensor {plan.name!r}: produced {t!r}, planned {plan.qtype} {plan.shape}")
    return t.data
