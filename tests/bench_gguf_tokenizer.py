"""Prints how long building each real GGUF tokenizer takes and how fast it encodes ~5 KB of text,
and ~100 KB of Python standard library source (encode and decode).

    PYTHONPATH=src /work/main/.venv/bin/python tests/bench_gguf_tokenizer.py
Metadata reading is timed apart from building; each figure is the best of a few runs.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_files import gemma3_path, smollm2_path  # noqa: E402

from smallmind.formats.gguf import GGUFFile
from smallmind.formats.gguf_tokenizer import tokenizer_from_gguf  # noqa: E402

REPEATS = 3
# ~5 KB of mixed prose, code, numbers and non-Latin text
SAMPLE = ("The tokenizer splits text into pieces; each piece maps to an id. " * 25
          + "def f(x):\n    return [i * 2 for i in range(x) if i % 3]\n" * 20
          + "Prices: 1,234.56 EUR, 7890 USD on 2024-03-01.\n" * 20
          + "日本語のテキストと中文测试 café naïve 👍🏽\n" * 20)

LONG_BYTES = 100_000


def stdlib_source(size: int) -> str:
    """The first `size` bytes of the standard library's modules, in name order (a long, real text)."""
    parts, total = [], 0
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text.encode("utf-8"))
        if total >= size:
            break
    return "".join(parts).encode("utf-8")[:size].decode("utf-8", errors="ignore")


def best_of(fn):
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    long_text = stdlib_source(LONG_BYTES)
    print(f"sample: {len(SAMPLE.encode('utf-8'))} bytes; long text: {len(long_text.encode('utf-8'))} bytes")
    for name, path in (("gemma3", gemma3_path()), ("smollm2", smollm2_path())):
        read_s, meta = best_of(lambda: GGUFFile(path).metadata)
        build_s, tok = best_of(lambda: tokenizer_from_gguf(meta))
        encode_s, ids = best_of(lambda: tok.encode(SAMPLE))
        special_s, _ = best_of(lambda: tok.encode(SAMPLE, special=True))
        decode_s, _ = best_of(lambda: tok.decode(ids))
        print(f"{name:8s} vocab {tok.vocab_size:6d}  read meta {read_s * 1e3:6.0f} ms  "
              f"build {build_s * 1e3:6.0f} ms  encode {encode_s * 1e3:5.1f} ms "
              f"({len(ids)} ids; special=True {special_s * 1e3:5.1f} ms)  decode {decode_s * 1e3:5.1f} ms")
        long_s, long_ids = best_of(lambda: tok.encode(long_text))
        long_decode_s, _ = best_of(lambda: tok.decode(long_ids))
        print(f"{'':8s} long text: encode {long_s * 1e3:6.0f} ms ({len(long_ids)} ids)  "
              f"decode {long_decode_s * 1e3:5.1f} ms")


if __name__ == "__main__":
    main()
