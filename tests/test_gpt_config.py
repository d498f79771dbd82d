import numpy as np
import pytest

from smallmind import SmallMindError
from smallmind.models.gpt import PRESETS, GPTConfig, Params, init_params, preset


def test_preset_sizes_match_their_descriptions():
    counts = {name: Params(cfg).count for name, cfg in PRESETS.items()}
    assert 3.0e6 < counts["seed"] < 3.6e6
    assert 0.4e6 < counts["tiny"] < 0.6e6
    assert 27e6 < counts["small"] < 33e6
    assert 90e6 < counts["base"] < 110e6


def test_params_views_share_one_buffer_and_decayed_matrices_lead():
    p = init_params(preset("tiny"), seed=1)
    p["h.0.attn.qkv.weight"][0, 0] = 123.0
    assert 123.0 in p.flat
    decayed = p.flat[: p.decay_size]
    assert decayed.size == sum(v.size for n, v in p.items() if n.endswith(".weight") and v.ndim == 2)


def test_init_is_deterministic_per_seed():
    a, b, c = (init_params(preset("tiny"), seed=s).flat for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_config_is_refused_with_a_clear_error():
    with pytest.raises(SmallMindError, match="multiple of n_heads"):
        GPTConfig(d_model=100, n_heads=8)
    with pytest.raises(SmallMindError, match="unknown preset"):
        preset("huge")
