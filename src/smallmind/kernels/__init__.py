"""Kernels: one name per operation, run natively where the extension is built, else on
the NumPy references.

Everything above this layer calls `smallmind.kernels.<name>(...)` through the module at
call time; see reference.py for the meaning, shapes and signatures of each kernel.

Environment: SMALLMIND_KERNELS=numpy forces the references; SMALLMIND_ISA=avx512|avx2|
generic forces a (lower) native path. `path` says which runs: "native-avx512",
"native-avx2", "native-generic" or "numpy"; select_isa(name) switches at run time.

Products: `linear` and its fused forms (linear_gelu, linear_residual, linear_backward_input,
linear_backward_weight) run a few rows on a kernel that reads each weight row once for all of
them, and many rows on the native GEMM (packed panels, the element-wise work fused into its
store) or on BLAS, per ISA as measured (kernels/csrc/module.c gemm_min_rows). bf16_support()
says whether this process may use BF16 instructions.

set_threads(n) is the one thread budget (BLAS through threadpoolctl and the native pool
together; default: the CPUs this process may use); get_info() describes the machine, the
kernel path and the libraries, as `smallmind doctor` prints it.
"""

import contextlib
import importlib.util
import os
import warnings

from ..errors import SmallMindError
from . import quant_reference, reference
from .qtensor import QTensor

KERNEL_NAMES = (
    "linear", "embedding", "embedding_backward", "layer_norm", "layer_norm_backward",
    "rms_norm", "gelu", "gelu_backward", "silu", "swiglu", "geglu", "softmax",
    "rope", "kv_cache_store", "attention",
    "cross_entropy", "adamw_step", "linear_gelu", "linear_residual", "linear_backward_input",
    "linear_backward_weight", "round_bf16", "sample_softmax", "rope_rows", "kv_cache_store_rows",
    "attention_rows", "attention_train_forward", "attention_train_backward",
)
ISAS = ("avx512", "avx2", "generic")
MAX_THREADS = 64  # the native pool's size (csrc/pool.c SM_MAX_THREADS)


def _load_native():
    choice = os.environ.get("SMALLMIND_KERNELS", "").strip().lower()
    if choice == "numpy":
        return None
    if choice not in ("", "native"):
        warnings.warn(f"SMALLMIND_KERNELS={choice!r} is not 'numpy' or 'native'; using native",
                      RuntimeWarning, stacklevel=3)
    if importlib.util.find_spec(f"{__name__}._native") is None:
        warnings.warn("smallmind: the native kernels are not built (no C compiler at install "
                      "time?); running on the NumPy references", RuntimeWarning, stacklevel=3)
        return None
    try:
        from . import native
    except ImportError as e:
        warnings.warn(f"smallmind: the native kernels do not load ({e}); running on the NumPy "
                      "references", RuntimeWarning, stacklevel=3)
        return None
    isa = os.environ.get("SMALLMIND_ISA", "").strip().lower()
    if isa:
        try:
            native.select_isa(isa)
        except ValueError:
            warnings.warn(f"SMALLMIND_ISA={isa!r} is not one of {', '.join(ISAS)} supported by this "
                          f"CPU; using {native.isa()}", RuntimeWarning, stacklevel=3)
    return native


_backend = _load_native()
path = f"native-{_backend.isa()}" if _backend else "numpy"
_impl = _backend or reference
for _name in KERNEL_NAMES:
    globals()[_name] = getattr(_impl, _name)
_threads = None
_f32_linear, _f32_embedding = linear, embedding  # noqa: F821 (bound by the loop above)
if _backend is not None:
    _quant_linear, _quant_embedding, _dequantize = (_backend.quant_linear, _backend.quant_embedding,
                                                    _backend.quant_dequantize)
else:
    _quant_linear, _quant_embedding, _dequantize = (quant_reference.linear, quant_reference.embedding,
                                                    quant_reference.dequantize)


def linear(x, w, b, out, accumulate=False):
    # x (T,K), w (N,K) float32 array or QTensor, b (N,) or None, out (T,N): out (+)= x @ w.T + b
    if w.__class__ is QTensor:
        return _quant_linear(x, w, b, out, accumulate)
    return _f32_linear(x, w, b, out, accumulate)


def embedding(tokens, wte, wpe, pos0, out):
    # tokens (T,) int, wte (V,C) float32 or QTensor, wpe (P,C) or None, out (T,C)
    if wte.__class__ is QTensor:
        return _quant_embedding(tokens, wte, wpe, pos0, out)
    return _f32_embedding(tokens, wte, wpe, pos0, out)


def dequantize(w, out):
    # w (N,K) QTensor, out (N,K) float32: the values the block format holds
    return _dequantize(w, out)


def bf16_support() -> dict:
    """{"avx512_bf16": bool, "amx_bf16": bool}: BF16 instructions this process may use (the CPU
    has them and the OS saves their registers; AMX also needs Linux's per-process grant)."""
    if _backend is not None:
        return dict(_backend.bf16_support())
    from .info import cpuinfo

    flags = cpuinfo()[1]  # Linux lists a feature only when it enables its register state
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags and "amx_tile" in flags}


@contextlib.contextmanager
def bf16_products(on: bool = True):
    """Within the block, the products on the native GEMM run in BF16 (their inputs rounded to
    it, float32 sums, as dpbf16ps does) where the GEMM build has a BF16 tile (AVX512-BF16
    CPUs); elsewhere they run as before, on whatever inputs they are given."""
    if _backend is None:
        yield
        return
    previous = _backend.bf16_products(on)
    try:
        yield
    finally:
        _backend.bf16_products(previous)


def select_isa(name: str) -> str:
    """Run the native kernels built for `name` (one of ISAS, or "best"); returns `path`."""
    global path
    if _backend is None:
        raise SmallMindError("native kernels are not in use; no ISA to select")
    try:
        path = f"native-{_backend.select_isa(name)}"
    except ValueError as e:
        raise SmallMindError(str(e)) from None
    return path


def set_threads(n: int) -> None:
    """One thread budget for BLAS and the native kernels together."""
    from threadpoolctl import threadpool_limits

    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SmallMindError(f"thread count must be a positive integer, got {n!r}")
    if n > MAX_THREADS:
        raise SmallMindError(f"thread count must be at most {MAX_THREADS}, got {n}")
    threadpool_limits(limits=n, user_api="blas")
    if _backend is not None:
        _backend.set_threads(n)
    _threads = n


def get_threads() -> int:
    """The thread budget in force (native kernel threads, counting the caller)."""
    if _backend is not None:
        return _backend.get_threads()
    return _threads or _default_threads()


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def get_info() -> dict:
    """What runs where: CPU, its features, kernel path, BLAS and thread counts."""
    from .info import collect

    return collect(_backend, path, get_threads())


if _backend is not None:
    _backend.set_threads(_default_threads())
