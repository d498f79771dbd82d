"""SmallMind: train, run and profile small language models on an ordinary CPU."""

from .errors import SmallMindError
from .models.gpt import PRESETS, GPTConfig, init_params, preset

__version__ = "0.1.0"
__all__ = ["GPTConfig", "PRESETS", "SmallMindError", "init_params", "preset"]
