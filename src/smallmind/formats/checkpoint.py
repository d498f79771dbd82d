"""Checkpoints: one directory of safetensors and JSON files, written atomically.

  config.json          format, version, the model config and the list of files saved
  model.safetensors    every parameter by name (float32, the shapes of models/gpt.py)
  tokenizer.json       the tokenizer (formats/tokenizer.py)
  optimizer.safetensors  optional: optimizer arrays; its scalars in the metadata
  trainer_state.json   optional: step, RNG states, best validation loss, loss history ...

A save writes a complete sibling directory `.NAME.tmp` (every file fsynced), then swaps it
in. On Linux the swap is one atomic exchange of the two directories (renameat2 with
RENAME_EXCHANGE), so NAME always names a complete checkpoint, for any reader; the old one,
now in `.NAME.tmp`, is then deleted. Where that call is unavailable (another OS, an old
kernel or C library, a filesystem without it) the swap is two renames: NAME -> `.NAME.old`,
`.NAME.tmp` -> NAME; a process killed between them leaves only `.NAME.old`, and load (and
the next save) take it back. Either way a kill at any point leaves a complete checkpoint.

The out directory of `smallmind train` holds two checkpoints, `best` (lowest validation
loss) and `last` (for resuming); `load_checkpoint(out_dir)` loads `best`.
"""

import ctypes
import errno
import functools
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, SmallMindError, TokenizerError
from ..models.gpt import GPTConfig, Params, param_shapes
from .tokenizer import Tokenizer, tokenizer_from_json

FORMAT = "smallmind-checkpoint"
VERSION = 1
CONFIG, MODEL, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
OPTIMIZER, TRAINER_STATE = "optimizer.safetensors", "trainer_state.json"
BEST, LAST = "best", "last"


@dataclass
class Checkpoint:
    config: GPTConfig
    params: Params
    tokenizer: Tokenizer
    optimizer_state: dict | None = None
    trainer_state: dict | None = None


def _tmp_dir(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _old_dir(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def save_checkpoint(dir, *, config: GPTConfig, params: Params, tokenizer: Tokenizer,
                    optimizer_state: dict | None = None, trainer_state: dict | None = None) -> Path:
    """Write a checkpoint to `dir`, replacing any checkpoint there only once the new one is complete."""
    target = Path(dir)
    if params.cfg != config:
        raise CheckpointError("the parameters were built for a different model config")
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"tokenizer vocabulary ({tokenizer.vocab_size}) differs from the model's ({config.vocab_size})")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _recover(target)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {target}: {e.strerror or e}") from None
    files = {
        MODEL: _safetensors_bytes(dict(params.items()), {}),
        TOKENIZER: tokenizer.to_json().encode("utf-8"),
    }
    if optimizer_state is not None:
        files[OPTIMIZER] = _optimizer_bytes(optimizer_state)
    if trainer_state is not None:
        files[TRAINER_STATE] = json.dumps(trainer_state).encode("utf-8")
    meta = {"format": FORMAT, "version": VERSION, "model": config.to_dict(), "files": sorted(files)}
    files[CONFIG] = json.dumps(meta, indent=2).encode("utf-8")

    tmp = _tmp_dir(target)
    try:
        tmp.mkdir()
        for name, data in files.items():
            _write_synced(tmp / name, data)
        _fsync_dir(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write checkpoint {target}: {e.strerror or e}") from None
        raise
    old = _old_dir(target)
    try:
        if target.exists() and _exchange(tmp, target):
            old = tmp  # the previous checkpoint, swapped out
        else:
            if target.exists():
                os.rename(target, old)
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        raise CheckpointError(f"cannot move checkpoint {target} into place: {e.strerror or e}") from None
    shutil.rmtree(old, ignore_errors=True)
    return target


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# errnos that mean "no atomic exchange here" (kernel, C library or filesystem), not a failure
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


@functools.cache
def _renameat2():
    # glibc >= 2.28 exports renameat2; None elsewhere (then saves fall back to two renames)
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None
    if fn is not None:
        fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap directories a and b in one atomic step; False where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))


def _recover(target: Path) -> None:
    # finish what an interrupted save left: roll back to `.old` if the swap was cut short,
    # and drop a half-written `.tmp`
    old = _old_dir(target)
    if old.exists() and not target.exists():
        os.rename(old, target)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(_tmp_dir(target), ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                metadata={k: json.dumps(v) for k, v in metadata.items()})


def _optimizer_bytes(state: dict) -> bytes:
    # arrays become tensors; ints, floats and other JSON values ride in the metadata
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v.item() if isinstance(v, np.generic) else v
               for k, v in state.items() if not isinstance(v, np.ndarray)}
    return _safetensors_bytes(arrays, {"scalars": scalars})


def has_checkpoint(path) -> bool:
    """Whether `path` is a checkpoint, or an out dir holding one (best or last), even mid-save."""
    path = Path(path)
    candidates = [path, path / BEST, path / LAST]
    return any((p / CONFIG).exists() or (_old_dir(p) / CONFIG).exists() for p in candidates)


def resolve_checkpoint_dir(path) -> Path:
    """The checkpoint directory that `path` names: itself, or the `best` checkpoint of an out dir."""
    path = Path(path)
    if not path.exists() and _old_dir(path).is_dir():
        return _old_dir(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if (path / CONFIG).exists():
        return path
    best = path / BEST
    if best.exists() or _old_dir(best).exists():
        return resolve_checkpoint_dir(best)
    raise CheckpointError(f"{path} is not a checkpoint: it has no {CONFIG} and no {BEST}/ checkpoint inside")


def load_checkpoint(dir) -> Checkpoint:
    """Load and validate a checkpoint; any missing or corrupt part raises CheckpointError."""
    path = resolve_checkpoint_dir(dir)
    config, files = _read_config(path)
    tensors, _ = _read_safetensors(path / MODEL)
    params = _params_from(config, tensors, path / MODEL)
    tokenizer = _read_tokenizer(path, config)

    optimizer_state = None
    if OPTIMIZER in files:
        arrays, metadata = _read_safetensors(path / OPTIMIZER)
        scalars = _parse_metadata_json(metadata.get("scalars", "{}"), path / OPTIMIZER)
        optimizer_state = {**arrays, **scalars}
    trainer_state = None
    if TRAINER_STATE in files:
        trainer_state = _read_json(path / TRAINER_STATE)
        if not isinstance(trainer_state, dict):
            raise CheckpointError(f"{path / TRAINER_STATE} does not hold a JSON object")
    return Checkpoint(config, params, tokenizer, optimizer_state, trainer_state)


def load_checkpoint_tokenizer(dir) -> tuple[GPTConfig, Tokenizer]:
    """The config and tokenizer of a checkpoint, without reading its parameters (CheckpointError
    as load_checkpoint raises it for a missing or corrupt part of those)."""
    path = resolve_checkpoint_dir(dir)
    config, _ = _read_config(path)
    return config, _read_tokenizer(path, config)


def _read_config(path: Path) -> tuple[GPTConfig, list]:
    meta = _read_json(path / CONFIG)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG} is not a SmallMind checkpoint config")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path / CONFIG} has checkpoint format version {meta.get('version')!r}; this SmallMind reads {VERSION}")
    try:
        config = GPTConfig.from_dict(meta.get("model"))
    except SmallMindError as e:  # its message names the setting: "bad model config: ..."
        raise CheckpointError(f"{path / CONFIG}: {e}") from None
    files = meta.get("files")
    if not isinstance(files, list) or MODEL not in files or TOKENIZER not in files:
        raise CheckpointError(f"{path / CONFIG}: bad or missing list of files")
    for name in files:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
    return config, files


def _read_tokenizer(path: Path, config: GPTConfig) -> Tokenizer:
    try:
        tokenizer = tokenizer_from_json((path / TOKENIZER).read_text(encoding="utf-8"), source=str(path / TOKENIZER))
    except (TokenizerError, UnicodeDecodeError) as e:
        raise CheckpointError(f"bad tokenizer in checkpoint: {e}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path / TOKENIZER} has {tokenizer.vocab_size} ids but the model has vocab_size {config.vocab_size}")
    return tokenizer


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt or not valid JSON ({e})") from None


def _parse_metadata_json(text: str, path: Path):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has corrupt metadata") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} has corrupt metadata")
    return value


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    """(tensors by name, metadata) of a safetensors file, refusing a truncated or corrupt one."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    try:
        tensors = load(data)
        # the header is valid JSON once load succeeded: u64 length, then the JSON
        (n,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e})") from None
    return tensors, metadata


def _params_from(config: GPTConfig, tensors: dict, path: Path) -> Params:
    # every name, shape and dtype is checked against the config before the model is allocated
    expected = {name: shape for name, shape, _ in param_shapes(config)}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{path} lacks tensor {missing[0]!r} that the model config requires")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{path} has tensor {extra[0]!r} that the model config does not define")
    for name, shape in expected.items():
        t = tensors[name]
        if t.shape != shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(t.shape)} but the config needs {shape}")
        if t.dtype != np.float32:
            raise CheckpointError(f"{path}: tensor {name!r} is {t.dtype}, expected float32")
    params = Params(config)
    for name in expected:
        params[name][...] = tensors[name]
        # NaN or infinite weights would generate one token forever without a word
        if not np.isfinite(params[name]).all():
            raise CheckpointError(f"{path}: the weights are not finite (tensor {name!r} holds NaN or infinity)")
    return params
