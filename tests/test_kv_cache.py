import numpy as np
import pytest

from smallmind.errors import SmallMindError
from smallmind.runtime.kv_cache import KVCache


def test_a_cache_over_given_buffers_uses_them():
    k, v = np.zeros((2, 4, 16, 8), np.float32), np.zeros((2, 4, 16, 8), np.float32)
    cache = KVCache(2, 4, 16, 8, k=k, v=v)
    assert cache.k is k and cache.v is v and np.shares_memory(cache.k_layers[1], k[1])


def test_a_cache_refuses_buffers_of_another_shape():
    with pytest.raises(SmallMindError, match="float32 of shape"):
        KVCache(2, 4, 32, 8, k=np.zeros((2, 4, 16, 8), np.float32), v=np.zeros((2, 4, 16, 8), np.float32))
