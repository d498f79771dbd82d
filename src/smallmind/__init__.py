"""SmallMind: train, run and profile small language models on an ordinary CPU."""

import os

# OpenBLAS's idle threads otherwise spin ~0.1 s after every call, taking the cores our native
# kernels need next (one thread budget). Only effective before NumPy is first imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .errors import SmallMindError
from .models.gpt import PRESETS, GPTConfig, init_params, preset

__version__ = "0.1.0"

# The rest of the public API loads on first use, so `import smallmind` stays light.
_LAZY = {
    "TrainConfig": ("runtime.trainer", "TrainConfig"),
    "train": ("runtime.trainer", "train"),
    "load": ("runtime.model", "load"),
    "Model": ("runtime.model", "Model"),
    "generate": ("runtime.generate", "generate"),
    "load_checkpoint": ("formats.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("formats.checkpoint", "save_checkpoint"),
    "train_tokenizer": ("formats.tokenizer", "train_tokenizer"),
    "kernels": ("kernels", None),
}

__all__ = ["GPTConfig", "PRESETS", "SmallMindError", "init_params", "preset", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'smallmind' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    return module if attr is None else getattr(module, attr)
