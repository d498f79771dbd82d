"""Exceptions a user can act on. The CLI prints their message as one line and exits non-zero."""


class SmallMindError(Exception):
    """Base class: anything the user can fix (bad input, missing file, wrong flag)."""


class DataError(SmallMindError):
    """The training text is missing, empty, binary or not UTF-8."""


class CheckpointError(SmallMindError):
    """A checkpoint directory is missing files or holds corrupt ones."""


class TokenizerError(SmallMindError):
    """Text the tokenizer cannot encode, or a tokenizer file it cannot read."""


class ContextLengthError(SmallMindError):
    """A prompt plus generation that does not fit the model's context."""


class KernelInputError(SmallMindError, ValueError):
    """An array of the wrong shape, dtype or layout was handed to a kernel."""


class GGUFError(SmallMindError):
    """A GGUF file that is unreadable, damaged, or lacks a key or tensor the model needs."""


class ChatTemplateError(SmallMindError):
    """A chat template that cannot be compiled or rendered, or messages it cannot take."""
