import math

import numpy as np
import pytest

from smallmind.errors import CheckpointError, SmallMindError
from smallmind.models.gpt import GPTConfig, init_params
from smallmind.runtime.optim import AdamW, clip_grad_norm, lr_at

CFG = GPTConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, tied_head=False)


def random_grads(params, rng):
    grads = params.zeros_like()
    grads.flat[...] = rng.normal(0.0, 0.05, grads.flat.shape).astype(np.float32)
    return grads


def test_adamw_matches_torch_with_decay_and_no_decay_groups():
    import torch

    params = init_params(CFG, 0)
    d = params.decay_size
    decayed = torch.nn.Parameter(torch.from_numpy(params.flat[:d].copy()))
    others = torch.nn.Parameter(torch.from_numpy(params.flat[d:].copy()))
    ref = torch.optim.AdamW([{"params": [decayed], "weight_decay": 0.1}, {"params": [others], "weight_decay": 0.0}],
                            lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    ours = AdamW(params, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    rng = np.random.default_rng(1)
    for lr in (3e-4, 1e-3, 6e-4, 2e-3, 1e-4):
        grads = random_grads(params, rng)
        ours.step(grads, lr)
        decayed.grad = torch.from_numpy(grads.flat[:d].copy())
        others.grad = torch.from_numpy(grads.flat[d:].copy())
        for group in ref.param_groups:
            group["lr"] = lr
        ref.step()
    expected = np.concatenate([decayed.detach().numpy(), others.detach().numpy()])
    np.testing.assert_allclose(params.flat, expected, rtol=0, atol=1e-6)
    moved = np.abs(params.flat - init_params(CFG, 0).flat).max()
    assert moved > 1e-3  # the comparison is not between two unchanged buffers


def test_weight_decay_applies_only_to_the_matrices():
    params = init_params(CFG, 2)
    before = params.flat.copy()
    opt = AdamW(params, weight_decay=0.5)
    opt.step(params.zeros_like(), lr=0.1)
    d = params.decay_size
    np.testing.assert_allclose(params.flat[:d], before[:d] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(params.flat[d:], before[d:])


def test_adamw_resume_from_state_dict_is_bit_identical():
    rng = np.random.default_rng(3)
    grads = [random_grads(init_params(CFG), rng) for _ in range(5)]
    params = init_params(CFG, 4)
    opt = AdamW(params)
    for g in grads[:3]:
        opt.step(g, 1e-3)
    state = opt.state_dict()
    resumed_params = init_params(CFG)
    resumed_params.flat[...] = params.flat
    for g in grads[3:]:
        opt.step(g, 1e-3)
    resumed = AdamW(resumed_params)
    resumed.load_state_dict(state)
    for g in grads[3:]:
        resumed.step(g, 1e-3)
    assert state["step"] == 3 and resumed.step_count == 5
    np.testing.assert_array_equal(resumed_params.flat, params.flat)


def test_state_dict_is_a_snapshot():
    params = init_params(CFG, 5)
    opt = AdamW(params)
    opt.step(random_grads(params, np.random.default_rng(0)), 1e-3)
    state = opt.state_dict()
    m = state["m"].copy()
    opt.step(random_grads(params, np.random.default_rng(1)), 1e-3)
    np.testing.assert_array_equal(state["m"], m)


@pytest.mark.parametrize("state, message", [
    ({"m": np.zeros(3, np.float32), "v": np.zeros(3, np.float32), "step": 1}, "another model"),
    ({"m": np.zeros(3, np.float32), "step": 1}, "missing"),
])
def test_load_state_dict_refuses_state_of_another_model(state, message):
    opt = AdamW(init_params(CFG))
    with pytest.raises(CheckpointError, match=message):
        opt.load_state_dict(state)


def test_adamw_refuses_gradients_of_another_model():
    opt = AdamW(init_params(CFG))
    other = init_params(GPTConfig(vocab_size=8, context_length=4, d_model=8, n_layers=1, n_heads=1))
    with pytest.raises(SmallMindError, match="do not match"):
        opt.step(other, 1e-3)


SCHEDULE = dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110)


def test_lr_warms_up_linearly():
    assert lr_at(0, **SCHEDULE) == pytest.approx(1e-4)
    assert lr_at(4, **SCHEDULE) == pytest.approx(5e-4)
    assert lr_at(9, **SCHEDULE) == pytest.approx(1e-3)


def test_lr_peaks_after_warmup_then_follows_the_cosine_to_min_lr():
    assert lr_at(10, **SCHEDULE) == pytest.approx(1e-3)
    assert lr_at(60, **SCHEDULE) == pytest.approx(5.5e-4)
    assert lr_at(35, **SCHEDULE) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert lr_at(110, **SCHEDULE) == pytest.approx(1e-4)
    assert lr_at(500, **SCHEDULE) == pytest.approx(1e-4)


def test_lr_without_warmup_starts_at_max_lr():
    assert lr_at(0, max_lr=2e-3, min_lr=0.0, warmup_steps=0, total_steps=5) == pytest.approx(2e-3)


@pytest.mark.parametrize("kwargs", [
    dict(SCHEDULE, min_lr=2e-3),
    dict(SCHEDULE, warmup_steps=-1),
    dict(SCHEDULE, total_steps=0),
])
def test_lr_schedule_refuses_bad_settings(kwargs):
    with pytest.raises(SmallMindError):
        lr_at(0, **kwargs)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    import torch

    g = np.random.default_rng(6).normal(0.0, 0.1, 10_000).astype(np.float32)
    t = torch.nn.Parameter(torch.zeros(10_000))
    t.grad = torch.from_numpy(g.copy())
    ref_norm = torch.nn.utils.clip_grad_norm_([t], max_norm).item()
    norm = clip_grad_norm(g, max_norm)
    assert norm == pytest.approx(ref_norm, rel=1e-6)
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6, atol=0)


def test_clip_grad_norm_leaves_non_finite_gradients_alone():
    g = np.array([1.0, np.inf, 2.0], dtype=np.float32)
    assert math.isinf(clip_grad_norm(g, 1.0))
    np.testing.assert_array_equal(g, [1.0, np.inf, 2.0])


def test_clip_grad_norm_refuses_non_positive_max_norm():
    with pytest.raises(SmallMindError, match="positive"):
        clip_grad_norm(np.ones(3, dtype=np.float32), 0.0)
