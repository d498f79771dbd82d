import numpy as np
import pytest

from smallmind.errors import SmallMindError
from smallmind.runtime.kv_cache import KVCache, kv_dtype


def test_a_cache_over_given_buffers_uses_them():
    k, v = np.zeros((2, 4, 16, 8), np.float32), np.zeros((2, 4, 16, 8), np.float32)
    cache = KVCache(2, 4, 16, 8, k=k, v=v)
    assert cache.k is k and cache.v is v and np.shares_memory(cache.k_layers[1], k[1])


def test_a_cache_refuses_buffers_of_another_shape():
    with pytest.raises(SmallMindError, match="float32 of shape"):
        KVCache(2, 4, 32, 8, k=np.zeros((2, 4, 16, 8), np.float32), v=np.zeros((2, 4, 16, 8), np.float32))


def test_a_half_cache_holds_half_the_bytes():
    half, full = KVCache(2, 4, 16, 8, dtype=np.float16), KVCache(2, 4, 16, 8)
    assert half.k.dtype == half.v.dtype == np.float16 and half.dtype == np.float16
    assert half.nbytes * 2 == full.nbytes


def test_a_cache_refuses_buffers_of_another_dtype():
    k = np.zeros((2, 4, 16, 8), np.float32)
    with pytest.raises(SmallMindError, match="float16 of shape"):
        KVCache(2, 4, 16, 8, k=k, v=k.copy(), dtype=np.float16)


def test_a_cache_refuses_a_dtype_kernels_do_not_read():
    with pytest.raises(SmallMindError, match="float32 or float16"):
        KVCache(2, 4, 16, 8, dtype=np.float64)


def test_the_cache_dtype_is_the_networks_choice_else_float32():
    class Net:
        kv_dtype = np.float16

    assert kv_dtype(Net()) == np.float16
    assert kv_dtype(object()) == np.float32
