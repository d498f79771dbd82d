"""SmallMind: train, run and profile small language models on an ordinary CPU."""

import os

# OpenBLAS's idle threads otherwise spin ~0.1 s after every call, taking the cores our native
# kernels need next (one thread budget). Only effective before NumPy is first imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .errors import SmallMindError
from .models.gpt import PRESETS, GPTConfig, init_params, preset

__version__ = "0.1.0"
__all__ = ["GPTConfig", "PRESETS", "SmallMindError", "init_params", "preset"]
