"""Writes tests/reference/quant_llamacpp.json: ggml's own quantizers (llama.cpp's
ggml_quantize_chunk, through the libggml-base that llama-cpp-python ships) applied to the fixed
test matrix of tests/test_quantize.py, as hex, for the always-on byte-equality tests.

    .venv/bin/python tests/reference/make_quant_refs.py
"""

import ctypes
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "src"))

from test_quantize import GGUF_HAS, K_FORMATS, weights  # noqa: E402

from smallmind.kernels.qtensor import QTYPES, row_bytes  # noqa: E402


def ggml():
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None:
        raise SystemExit("llama-cpp-python is not installed (see the README for how to build it)")
    lib = ctypes.CDLL(str(Path(spec.submodule_search_locations[0]) / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def main() -> None:
    import llama_cpp

    lib = ggml()
    w = weights(seed=1)
    out = {"llama_cpp_python": llama_cpp.__version__, "matrix": "tests/test_quantize.py weights(seed=1)",
           "matrix_sha256": hashlib.sha256(w.tobytes()).hexdigest(), "bytes": {}}
    for qtype in K_FORMATS + GGUF_HAS:
        ref = np.zeros((w.shape[0], row_bytes(qtype, w.shape[1])), np.uint8)
        lib.ggml_quantize_chunk(QTYPES[qtype][0], w.ctypes.data, ref.ctypes.data, 0, w.shape[0], w.shape[1], None)
        out["bytes"][qtype] = ref.tobytes().hex()
    (HERE / "quant_llamacpp.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
