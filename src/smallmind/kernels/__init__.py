"""Kernels: one name per operation, run natively where the extension is built, else on
the NumPy references. SMALLMIND_KERNELS=numpy forces the references.

Everything above this layer calls `smallmind.kernels.<name>(...)`; see reference.py for
the meaning, shapes and signatures of each kernel.
"""

from . import reference

KERNEL_NAMES = (
    "linear", "embedding", "embedding_backward", "layer_norm", "layer_norm_backward",
    "rms_norm", "gelu", "gelu_backward", "silu", "swiglu", "geglu", "softmax",
    "causal_softmax", "softmax_backward", "rope", "kv_cache_store", "attention",
    "cross_entropy", "adamw_step",
)

path = "numpy"

for _name in KERNEL_NAMES:
    globals()[_name] = getattr(reference, _name)


def set_threads(n: int) -> None:
    """One thread budget for BLAS and the native kernels together."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=int(n))
