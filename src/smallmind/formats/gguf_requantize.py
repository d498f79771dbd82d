"""A GGUF file requantized to another file type, tensor by tensor.

    plans, metadata, fallbacks = requantize_plan(gguf_file, "Q8_0")

Each tensor the mixture (quant_recipe) converts is decoded from what the file stores (the
highest precision the file holds of it: its float32 values, or its 16-bit or block-format
values dequantized to float32) and quantized to the chosen format; a tensor already stored in
the chosen format is copied byte for byte, never quantized twice. Tensors the mixture leaves
alone (norms, biases, position embeddings) are copied as stored, vectors as float32.
Metadata is copied in its order, with general.file_type set to the new type and without
general.alignment (the writer's default alignment is used).
"""

import numpy as np

from .. import kernels
from ..kernels.qtensor import QTensor
from ..kernels.quantize import quantize
from .gguf import GGUFFile
from .gguf_write import TensorPlan, check_output_path, write_gguf
from .quant_recipe import FILE_TYPES, check_file_type, tensor_types

SKIPPED_KEYS = ("general.architecture", "general.alignment")


def requantize_plan(f, file_type: str):
    """(tensor plans, metadata, fallbacks) to write GGUFFile `f` as `file_type`."""
    arch = f.architecture
    n_layers = f.get_int(f"{arch}.block_count", 0)
    infos = f.tensor_infos
    choices = tensor_types([(t.name, t.shape) for t in infos], file_type, n_layers)
    new = {"general.file_type": FILE_TYPES[file_type][0], "general.quantization_version": 2}
    metadata = [(k, new.pop(k, None) if k in new else f.get(k)) for k in f.keys if k not in SKIPPED_KEYS]
    metadata += list(new.items())
    plans, fallbacks = [], []
    for info in infos:
        choice = choices.get(info.name)
        if choice is None:
            qtype = "F32" if len(info.shape) == 1 or info.type_name == "F32" else info.type_name
        else:
            qtype = choice.qtype
            if choice.wanted:
                fallbacks.append((info.name, choice.wanted, qtype))
        plans.append(TensorPlan(info.name, qtype, info.shape, _producer(f, info, qtype)))
    return plans, metadata, fallbacks


def _producer(f, info, qtype):
    def produce():
        t = f.tensor(info.name)
        if isinstance(t, QTensor) and t.qtype == qtype:
            return t
        values = t if not isinstance(t, QTensor) else kernels.dequantize(t, np.empty(t.shape, np.float32))
        if qtype == "F32":
            return values.reshape(info.shape)
        return quantize(values.reshape(-1, info.shape[-1]), qtype, info.name)
    return produce


def requantize_gguf(path, out, file_type: str, *, force: bool = False, progress=None):
    """Write GGUF file `path` to `out` requantized as `file_type`; returns (file size, tensor
    plans, fallbacks)."""
    check_file_type(file_type)
    check_output_path(out, force)
    with GGUFFile(path) as f:
        plans, metadata, fallbacks = requantize_plan(f, file_type)
        size = write_gguf(out, f.architecture, metadata, plans, force=force, progress=progress)
    return size, plans, fallbacks
