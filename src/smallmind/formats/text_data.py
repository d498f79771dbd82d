"""Training text: load it, split it into train/validation, and sample token windows.

Text comes from one UTF-8 file, a directory of them (recursive, sorted, hidden entries
skipped), or by default the running Python's standard-library source. A binary or
non-UTF-8 file is refused with a DataError naming it: silently training on part of what
the user pointed at would be worse than stopping. So is anything that is not a regular
file (a FIFO would block forever, /dev/zero never ends) and a file above MAX_FILE_BYTES.
"""

import hashlib
import os
import stat
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..memory import format_bytes

# The default corpus stops before the first file that would take it past this many characters.
DEFAULT_CORPUS_CHARS = 4_000_000
# One data file may bring in at most this many bytes (its text takes up to 4x that in memory).
MAX_FILE_BYTES = 1 << 30
# Parts of the stdlib tree that are not the library itself (encodings: mostly code-page tables).
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def load_documents(path=None, *, max_chars: int = DEFAULT_CORPUS_CHARS) -> list[Document]:
    """The documents under `path` (a file or directory), or the stdlib corpus when None.
    max_chars caps only the default corpus."""
    if path is None:
        return stdlib_corpus(max_chars)
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        docs = [Document(str(path), read_text_file(path))]
    elif path.is_dir():
        docs = [Document(str(p), read_text_file(p)) for p in _text_files_under(path)]
    else:
        raise DataError(f"data path {path} is neither a file nor a directory")
    docs = [d for d in docs if d.text]
    if not docs:
        raise DataError(f"data path {path} holds no text")
    return docs


def read_text_file(path: Path) -> str:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"{path} is {_file_kind(mode)}, not a regular file; training data must be text files")
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise DataError(f"{path} is larger than {format_bytes(MAX_FILE_BYTES)}, the most one data file may hold; "
                        "split it into several files")
    if b"\0" in data:
        raise DataError(f"{path} is binary (it contains NUL bytes); training data must be UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _text_files_under(root: Path) -> list[Path]:
    # every non-hidden file below root, in a sorted order that does not depend on the filesystem
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def stdlib_corpus(max_chars: int = DEFAULT_CORPUS_CHARS) -> list[Document]:
    """The .py files of the running Python's standard library (no tests, no site-packages),
    in sorted order, up to max_chars characters. Files that are not UTF-8 are left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP]
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    files.sort(key=lambda p: p.relative_to(root).parts)
    docs, total = [], 0
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if total + len(text) > max_chars:
            break
        if text:
            docs.append(Document(f"stdlib/{p.relative_to(root).as_posix()}", text))
            total += len(text)
    if not docs:
        raise DataError(f"found no standard-library source under {root} to use as default data")
    return docs


def split_documents(docs: list[Document], val_fraction: float = 0.1) -> tuple[str, str]:
    """(train text, validation text): the last val_fraction of every document goes to
    validation, so both splits sample every document alike."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    train, val = [], []
    for d in docs:
        cut = len(d.text) - int(len(d.text) * val_fraction)
        train.append(d.text[:cut])
        val.append(d.text[cut:])
    return "".join(train), "".join(val)


def fingerprint(docs: list[Document]) -> str:
    """A hash of the documents' names and text: a resumed run must see the same data."""
    h = hashlib.sha256()
    for d in docs:
        for part in (Path(d.name).name, d.text):
            b = part.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def _check_length(tokens: np.ndarray, seq: int, what: str) -> None:
    if tokens.ndim != 1 or tokens.size < seq + 1:
        raise DataError(
            f"the {what} split has {tokens.size} tokens but one window needs seq+1 = {seq + 1}; "
            f"give more text or a shorter sequence length")


class BatchSampler:
    """Random windows of seq+1 tokens, reproducible from a seed and resumable from `state`.

    next() returns (x, y), two contiguous buffers made once: x = window[:-1], y = window[1:].
    """

    def __init__(self, tokens: np.ndarray, batch: int, seq: int, seed: int, *, what: str = "training"):
        # tokens (N,) int32
        _check_length(tokens, seq, what)
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        self.n_windows = tokens.size - seq
        self.offsets = np.arange(seq + 1)
        self.rng = np.random.default_rng(seed)
        self.batch = batch
        self.index = np.empty((batch, seq + 1), dtype=np.int64)
        self.buffer = np.empty((batch, seq + 1), dtype=np.int32)
        self.x = np.empty((batch, seq), dtype=np.int32)
        self.y = np.empty((batch, seq), dtype=np.int32)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        # -> x (B,T), y (B,T) int32, valid until the next call
        starts = self.rng.integers(0, self.n_windows, size=self.batch)
        # gather from the flat tokens: np.take over a sliding-window view would copy every window
        np.add(starts[:, None], self.offsets, out=self.index)
        np.take(self.tokens, self.index, out=self.buffer)
        self.x[...] = self.buffer[:, :-1]
        self.y[...] = self.buffer[:, 1:]
        return self.x, self.y

    @property
    def state(self) -> dict:
        return self.rng.bit_generator.state

    @state.setter
    def state(self, value: dict) -> None:
        self.rng.bit_generator.state = value


def evenly_spaced_batches(tokens: np.ndarray, batch: int, seq: int, count: int,
                          *, what: str = "validation") -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` fixed batches of windows spread evenly over `tokens`: the same every call,
    so evaluations at different steps are comparable."""
    # tokens (N,) int32 -> count pairs of x (B,T), y (B,T) int32
    _check_length(tokens, seq, what)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, seq + 1)
    starts = np.linspace(0, windows.shape[0] - 1, count * batch).round().astype(np.int64)
    chosen = windows[starts].reshape(count, batch, seq + 1)
    return [(np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])) for w in chosen]
