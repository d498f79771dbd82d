import re

import numpy as np
import pytest

from smallmind.errors import DataError
from smallmind.formats.text_data import (
    BatchSampler,
    Document,
    evenly_spaced_batches,
    fingerprint,
    load_documents,
    split_documents,
    stdlib_corpus,
)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def test_a_file_loads_as_one_document(tmp_path):
    f = write(tmp_path / "a.txt", "héllo\nwörld\n")
    assert load_documents(f) == [Document(str(f), "héllo\nwörld\n")]


def test_a_directory_loads_recursively_in_sorted_order_skipping_hidden_entries(tmp_path):
    write(tmp_path / "b.txt", "B")
    write(tmp_path / "a" / "z.txt", "AZ")
    write(tmp_path / "a" / "b" / "c.txt", "ABC")
    write(tmp_path / ".hidden.txt", "\0binary")
    write(tmp_path / ".git" / "objects", b"\xff\x00")
    docs = load_documents(tmp_path)
    assert [d.text for d in docs] == ["ABC", "AZ", "B"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: write(p / "empty.txt", ""), "holds no text"),
    (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "holds no text"),
])
def test_missing_or_empty_data_is_refused(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_documents(make(tmp_path))


def test_a_binary_file_in_a_directory_is_refused_by_name(tmp_path):
    write(tmp_path / "good.txt", "text")
    write(tmp_path / "sub" / "image.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(DataError, match=r"image\.png is binary"):
        load_documents(tmp_path)


def test_a_non_utf8_file_is_refused_by_name_with_the_offset(tmp_path):
    f = write(tmp_path / "latin1.txt", "café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 text \(invalid byte at offset 3\)"):
        load_documents(f)


def test_default_corpus_is_stdlib_source_capped_and_deterministic():
    docs = load_documents(None, max_chars=300_000)
    assert docs == stdlib_corpus(300_000)
    assert sum(len(d.text) for d in docs) <= 300_000
    assert all(d.name.startswith("stdlib/") and d.name.endswith(".py") for d in docs)
    assert not any("/test/" in d.name or "site-packages" in d.name for d in docs)
    assert len(docs) > 5


def test_split_puts_the_tail_of_every_document_in_validation():
    docs = [Document("a", "0123456789"), Document("b", "abcdefghijklmnopqrst")]
    train, val = split_documents(docs, 0.1)
    assert train == "012345678" + "abcdefghijklmnopqr"
    assert val == "9" + "st"


def test_fingerprint_depends_on_the_text():
    a = [Document("x/a.txt", "hello")]
    assert fingerprint(a) == fingerprint([Document("y/a.txt", "hello")])
    assert fingerprint(a) != fingerprint([Document("x/a.txt", "hellO")])


def test_batches_are_windows_of_consecutive_tokens_with_shifted_targets():
    tokens = np.arange(1000, dtype=np.int32)
    x, y = BatchSampler(tokens, batch=8, seq=16, seed=0).next()
    assert x.shape == y.shape == (8, 16) and x.dtype == np.int32
    assert np.array_equal(y, x + 1)
    assert np.array_equal(np.diff(x, axis=1), np.ones((8, 15)))
    assert x.min() >= 0 and y.max() <= 999


def test_batch_sampling_is_deterministic_from_the_seed_and_resumes_from_its_state():
    tokens = np.arange(5000, dtype=np.int32) % 97
    a, b = BatchSampler(tokens, 4, 8, seed=3), BatchSampler(tokens, 4, 8, seed=3)
    first = [a.next()[0].copy() for _ in range(3)]
    assert all(np.array_equal(f, b.next()[0]) for f in first)
    saved = a.state
    expected = [a.next()[0].copy() for _ in range(3)]
    c = BatchSampler(tokens, 4, 8, seed=99)
    c.state = saved
    assert all(np.array_equal(e, c.next()[0]) for e in expected)
    assert not np.array_equal(BatchSampler(tokens, 4, 8, seed=4).next()[0], first[0])


def test_a_split_shorter_than_one_window_is_refused():
    with pytest.raises(DataError, match="validation split has 8 tokens but one window needs seq\\+1 = 9"):
        evenly_spaced_batches(np.arange(8, dtype=np.int32), 2, 8, 1)
    with pytest.raises(DataError, match="training split"):
        BatchSampler(np.arange(4, dtype=np.int32), 2, 8, seed=0)


def test_evenly_spaced_batches_are_fixed_and_span_the_tokens():
    tokens = np.arange(1000, dtype=np.int32)
    batches = evenly_spaced_batches(tokens, 4, 10, 3)
    again = evenly_spaced_batches(tokens, 4, 10, 3)
    assert len(batches) == 3
    assert all(np.array_equal(x, x2) and np.array_equal(y, y2) for (x, y), (x2, y2) in zip(batches, again))
    starts = np.concatenate([x[:, 0] for x, _ in batches])
    assert starts[0] == 0 and starts[-1] == 1000 - 11
    assert all(np.array_equal(y, x + 1) for x, y in batches)


def test_batch_sampler_gathers_windows_without_copying_the_corpus():
    import tracemalloc

    tokens = np.arange(2_000_000, dtype=np.int32)  # a corpus whose windows would be ~1 GB copied
    sampler = BatchSampler(tokens, batch=16, seq=128, seed=0)
    sampler.next()
    tracemalloc.start()
    try:
        x, y = sampler.next()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert np.array_equal(y[:, :-1], x[:, 1:]) and np.all(np.diff(x, axis=1) == 1)


LOAD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a regression fails here, not the machine
from smallmind.errors import DataError
from smallmind.formats.text_data import load_documents
try:
    load_documents(sys.argv[1])
except DataError as e:
    print(e)
"""


@pytest.mark.parametrize("make, message", [
    (lambda d: __import__("os").mkfifo(d / "pipe.txt"), r"pipe\.txt is a FIFO, not a regular file"),
    (lambda d: (d / "zero.txt").symlink_to("/dev/zero"), r"zero\.txt is a device, not a regular file"),
])
def test_a_fifo_or_device_in_a_data_directory_is_refused_without_hanging(tmp_path, make, message):
    import subprocess
    import sys

    write(tmp_path / "good.txt", "text")
    make(tmp_path)
    res = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-1000:]
    assert re.search(message, res.stdout)


def test_a_file_above_the_size_bound_is_refused_by_name(tmp_path, monkeypatch):
    from smallmind.formats import text_data

    monkeypatch.setattr(text_data, "MAX_FILE_BYTES", 1000)
    write(tmp_path / "small.txt", "x" * 1000)
    write(tmp_path / "big.txt", "x" * 1001)
    with pytest.raises(DataError, match=r"big\.txt is larger than"):
        load_documents(tmp_path)
    assert load_documents(tmp_path / "small.txt")[0].text == "x" * 1000
