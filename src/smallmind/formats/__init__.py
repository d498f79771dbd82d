"""On-disk formats: tokenizers, checkpoints, training text."""
