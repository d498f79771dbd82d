"""The position-dependent part of a batched decode step: per-row kernel calls against the rows kernels.

A batched step (models/*.py forward_batch) runs RoPE on q and k, the KV store and attention for
B rows, each at its own position in its own KV cache. Called row by row that is 4 * B kernel
calls a layer (each with its profiler scope); the rows kernels (kernels.rope_rows,
kv_cache_store_rows, attention_rows) make it 4 calls a layer whatever B. This prints the time
of both for one step of every layer, at Gemma 3 270M's attention shapes by default (18 layers,
4 query heads, 1 KV head, head dim 256, float16 caches), with the rows' positions spread
around --pos.

    .venv/bin/python benchmarks/batch_rows.py [--layers 18] [--heads 4] [--kv-heads 1]
        [--head-dim 256] [--pos 40] [--repeats 50] [--threads N]
"""

import argparse
import time

import numpy as np

from smallmind import kernels
from smallmind.scope import scope


def per_row(q, k, v, att, k_caches, v_caches, positions, n_layers):
    # what forward_batch did before the rows kernels: every row's own calls, layer by layer
    for i in range(n_layers):
        for b in range(len(positions)):
            pos = int(positions[b])
            qb, kb, vb, ab = q[b:b + 1], k[b:b + 1], v[b:b + 1], att[b:b + 1]
            with scope("rope"):
                kernels.rope(qb, pos, 10000.0, qb, True, None)
                kernels.rope(kb, pos, 10000.0, kb, True, None)
            with scope("kv_cache"):
                kernels.kv_cache_store(kb, vb, k_caches[b][i], v_caches[b][i], pos)
            with scope("attention"):
                kernels.attention(qb, k_caches[b][i], v_caches[b][i], pos, ab, 0.0625, 512)


def rows(q, k, v, att, k_caches, v_caches, positions, n_layers):
    # the rows kernels: four calls a layer
    for i in range(n_layers):
        with scope("rope"):
            kernels.rope_rows(q, positions, 10000.0, q, True, None)
            kernels.rope_rows(k, positions, 10000.0, k, True, None)
        with scope("kv_cache"):
            kernels.kv_cache_store_rows(k, v, k_caches, v_caches, i, positions)
        with scope("attention"):
            kernels.attention_rows(q, k_caches, v_caches, i, positions, att, 0.0625, 512)


def median_ms(fn, repeats, *args):
    # fn(*args) -> the median of `repeats` timings in milliseconds, after one warm-up call
    fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=256)
    p.add_argument("--pos", type=int, default=40, help="the rows' positions lie around this one")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        kernels.set_threads(a.threads)
    rng = np.random.default_rng(0)
    L, H, Hkv, D = a.layers, a.heads, a.kv_heads, a.head_dim
    ctx = a.pos + 64
    print(f"kernels {kernels.path}, {kernels.get_threads()} threads; {L} layers, {H} heads, {Hkv} KV heads, "
          f"head dim {D}, float16 caches; positions around {a.pos}")
    print(f"{'rows':>4}  {'per-row ms':>10}  {'rows kernels ms':>15}  {'saved ms':>8}")
    for B in (1, 2, 4, 8):
        positions = (a.pos + rng.integers(-8, 8, B)).clip(0).astype(np.int64)
        k_caches = tuple(rng.standard_normal((L, Hkv, ctx, D)).astype(np.float16) for _ in range(B))
        v_caches = tuple(rng.standard_normal((L, Hkv, ctx, D)).astype(np.float16) for _ in range(B))
        q = rng.standard_normal((B, H, D)).astype(np.float32)
        k, v = (rng.standard_normal((B, Hkv, D)).astype(np.float32) for _ in range(2))
        att = np.zeros((B, H, D), np.float32)
        args = (q, k, v, att, k_caches, v_caches, positions, L)
        old, new = median_ms(per_row, a.repeats, *args), median_ms(rows, a.repeats, *args)
        print(f"{B:>4}  {old:>10.2f}  {new:>15.2f}  {old - new:>8.2f}")


if __name__ == "__main__":
    main()
