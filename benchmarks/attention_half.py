"""Attention over a float16 KV cache, one layer, at a GGUF model's shapes: decode of one row at
two positions, a batched decode step's rows (kernels.attention_rows) and two prefills.

This is the attention a GGUF model runs (llama.cpp's rounding: q and the probabilities to f16).
Defaults are Gemma 3 270M's (4 query heads on 1 KV head, head dim 256); SmolLM2 135M is
`--heads 9 --kv-heads 3 --head-dim 64`. Prints the median microseconds of each case. To compare
two versions, run it under each (an older checkout through PYTHONPATH=that/src), in turn.

    .venv/bin/python benchmarks/attention_half.py [--heads 4] [--kv-heads 1] [--head-dim 256]
        [--threads N] [--repeats 200]
"""

import argparse

import numpy as np
from side_by_side import call_times, cpu_model, positive_int

from smallmind import kernels
from smallmind.errors import SmallMindError

MAX_REPEATS = 100_000
MAX_HEADS = 256  # a 512-token prefill's queries and outputs stay within a few hundred MB


def median_us(fn, repeats):
    return float(np.median(call_times(fn, repeats))) * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--kv-heads", type=positive_int, default=1)
    p.add_argument("--head-dim", type=positive_int, default=256)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=200)
    args = p.parse_args()
    if args.heads % args.kv_heads:
        raise SystemExit("attention_half: --heads must be a multiple of --kv-heads")
    if args.heads > MAX_HEADS:
        raise SystemExit(f"attention_half: --heads must be at most {MAX_HEADS}")
    if args.repeats > MAX_REPEATS:
        raise SystemExit(f"attention_half: --repeats must be at most {MAX_REPEATS}")
    try:
        return run(args)
    except SmallMindError as e:   # a shape the kernels refuse (a head dim above what they take)
        raise SystemExit(f"attention_half: {e}") from None


def run(args):
    if args.threads:
        kernels.set_threads(args.threads)
    H, Hkv, D = args.heads, args.kv_heads, args.head_dim
    rng = np.random.default_rng(0)
    scale = float(D) ** -0.5

    def half(*shape):
        return rng.standard_normal(shape).astype(np.float16)

    print(f"CPU: {cpu_model()}")
    print(f"f16-cache attention, {H} head{'s' if H > 1 else ''} on {Hkv} KV head{'s' if Hkv > 1 else ''} of {D}, "
          f"{kernels.get_threads()} threads, "
          f"kernels {kernels.path}; median us of {args.repeats}")
    for T, pos in ((1, 128), (1, 2000), (128, 0), (512, 0)):
        q = rng.standard_normal((T, H, D), dtype=np.float32)
        out = np.empty_like(q)
        k, v = half(Hkv, pos + T, D), half(Hkv, pos + T, D)
        repeats = args.repeats if T == 1 else max(3, args.repeats // 20)
        us = median_us(lambda: kernels.attention(q, k, v, pos, out, scale), repeats)  # noqa: B023 (called at once)
        label = f"decode, 1 row at position {pos}" if T == 1 else f"prefill of {T} tokens"
        print(f"  {label:<36} {us:>10.1f} us")
    B = 8
    caches = [(half(1, Hkv, 512, D), half(1, Hkv, 512, D)) for _ in range(B)]
    q = rng.standard_normal((B, H, D), dtype=np.float32)
    out = np.empty_like(q)
    positions = np.array([120 + 5 * b for b in range(B)], np.int64)
    us = median_us(lambda: kernels.attention_rows(q, [c[0] for c in caches], [c[1] for c in caches], 0,
                                                  positions, out, scale, 0), args.repeats)
    print(f"  {'batched step, 8 rows at 120-155':<36} {us:>10.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
