"""What a model file holds and what a session of it needs (`smallmind inspect`)."""

from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import SmallMindError
from .kv_cache import kv_dtype
from .session import DEFAULT_PREFILL_CHUNK


def describe(path, ctx: int | None = None) -> dict:
    """A summary of the GGUF file or checkpoint directory at `path`; memory for a session of
    `ctx` positions (default: the smaller of the model's context and 4096)."""
    from .model import DEFAULT_CTX, load

    p = Path(path)
    if p.is_dir():
        model = load(p)
        net, tokenizer_kind, has_template = model.net, model.tokenizer.kind, None
        file_bytes = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        arch, name = model.architecture, model.name
    else:
        if not p.is_file():
            raise SmallMindError(f"no model file at {p}")
        from ..formats.gguf import GGUFFile
        from ..models import family

        f = GGUFFile(p)
        arch = f.architecture
        net = family(arch).from_gguf(f)
        tokenizer_kind = str(f.get("tokenizer.ggml.model", "none"))
        has_template = f.get("tokenizer.chat_template", None) is not None
        file_bytes = p.stat().st_size
        name = str(f.get("general.name", None) or p.stem)
    cfg = net.config
    if ctx is None:
        ctx = min(cfg.context_length, DEFAULT_CTX)
    if ctx > cfg.context_length:
        raise SmallMindError(f"--ctx {ctx} exceeds the model's context of {cfg.context_length}")
    types, weights_bytes, parameters = _tensor_types(net)
    n_layers, n_kv_heads, head_dim = net.kv_spec
    kv_bytes = 2 * n_layers * n_kv_heads * ctx * head_dim * kv_dtype(net).itemsize
    ws_bytes = _owned_bytes(net.workspace(min(DEFAULT_PREFILL_CHUNK, ctx)))
    return {
        "name": name,
        "path": str(p),
        "architecture": arch,
        "file_bytes": file_bytes,
        "context_length": cfg.context_length,
        "ctx": ctx,
        "parameters": parameters,
        "n_layers": n_layers,
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
        "tokenizer": tokenizer_kind,
        "chat_template": has_template,
        "tensor_types": types,
        "memory": {"weights_bytes": weights_bytes, "kv_cache_bytes": kv_bytes, "workspace_bytes": ws_bytes,
                   "total_bytes": weights_bytes + kv_bytes + ws_bytes},
    }


def _tensor_types(net) -> tuple[list[dict], int, int]:
    counts, params, nbytes = Counter(), Counter(), Counter()
    seen = set()
    for _, t in net.weights():
        if id(t) in seen:  # a tied head names the embedding twice
            continue
        seen.add(id(t))
        kind = getattr(t, "qtype", None) or str(np.dtype(t.dtype)).upper().replace("FLOAT", "F")
        counts[kind] += 1
        params[kind] += int(np.prod(t.shape))
        nbytes[kind] += int(t.nbytes)
    types = [{"type": k, "count": counts[k], "parameters": params[k], "bytes": nbytes[k]}
             for k in sorted(counts, key=lambda k: -nbytes[k])]
    return types, sum(nbytes.values()), sum(params.values())


def _owned_bytes(ws) -> int:
    # the arrays the workspace allocated (views into them are not counted again)
    return sum(v.nbytes for v in vars(ws).values() if isinstance(v, np.ndarray) and v.base is None)
