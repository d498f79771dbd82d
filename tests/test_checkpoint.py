import json
import os

import numpy as np
import pytest

from smallmind.errors import CheckpointError
from smallmind.formats import checkpoint as ckpt_mod
from smallmind.formats.checkpoint import load_checkpoint, save_checkpoint
from smallmind.formats.tokenizer import train_tokenizer
from smallmind.models.gpt import init_params, preset

TEXT = "hello checkpoint world: é ✓\n"


@pytest.fixture
def parts():
    tok = train_tokenizer("char", TEXT, 512)
    cfg = preset("tiny", vocab_size=tok.vocab_size, context_length=16, d_model=32, n_heads=2)
    params = init_params(cfg, seed=1)
    opt = {"m": np.arange(params.count, dtype=np.float32), "v": np.ones(params.count, np.float32), "step": 7}
    state = {"step": 7, "rng": {"state": 2**100 + 3}, "losses": [3.5, 2.25]}
    return dict(config=cfg, params=params, tokenizer=tok, optimizer_state=opt, trainer_state=state)


def save(path, parts, **changes):
    return save_checkpoint(path, **{**parts, **changes})


def test_round_trip_restores_every_part_exactly(tmp_path, parts):
    save(tmp_path / "ck", parts)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.config == parts["config"]
    assert np.array_equal(ck.params.flat, parts["params"].flat)
    assert ck.tokenizer.to_json() == parts["tokenizer"].to_json()
    assert np.array_equal(ck.optimizer_state["m"], parts["optimizer_state"]["m"])
    assert np.array_equal(ck.optimizer_state["v"], parts["optimizer_state"]["v"])
    assert ck.optimizer_state["step"] == 7
    assert ck.trainer_state == parts["trainer_state"]


def test_optimizer_and_trainer_state_are_optional(tmp_path, parts):
    save(tmp_path / "ck", parts, optimizer_state=None, trainer_state=None)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.optimizer_state is None and ck.trainer_state is None
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_an_out_dir_loads_its_best_checkpoint(tmp_path, parts):
    save(tmp_path / "run" / "last", parts)
    best = init_params(parts["config"], seed=2)
    save(tmp_path / "run" / "best", parts, params=best)
    assert np.array_equal(load_checkpoint(tmp_path / "run").params.flat, best.flat)


def test_saving_over_a_checkpoint_replaces_it(tmp_path, parts):
    save(tmp_path / "ck", parts)
    newer = init_params(parts["config"], seed=5)
    save(tmp_path / "ck", parts, params=newer)
    assert np.array_equal(load_checkpoint(tmp_path / "ck").params.flat, newer.flat)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, parts, monkeypatch):
    save(tmp_path / "ck", parts)
    real_write, calls = ckpt_mod._write_synced, []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_synced", failing_write)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*: No space left on device"):
        save(tmp_path / "ck", parts, params=init_params(parts["config"], seed=9))
    assert len(calls) == 3
    ck = load_checkpoint(tmp_path / "ck")
    assert np.array_equal(ck.params.flat, parts["params"].flat)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_a_save_killed_between_its_renames_loads_the_previous_checkpoint(tmp_path, parts):
    save(tmp_path / "ck", parts)
    # the state a kill after `ck -> .ck.old` leaves: no ck, a complete .ck.old, a partial .ck.tmp
    os.rename(tmp_path / "ck", tmp_path / ".ck.old")
    (tmp_path / ".ck.tmp").mkdir()
    (tmp_path / ".ck.tmp" / "model.safetensors").write_bytes(b"partial")
    assert np.array_equal(load_checkpoint(tmp_path / "ck").params.flat, parts["params"].flat)
    newer = init_params(parts["config"], seed=5)
    save(tmp_path / "ck", parts, params=newer)
    assert np.array_equal(load_checkpoint(tmp_path / "ck").params.flat, newer.flat)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_a_directory_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "optimizer.safetensors",
                                  "trainer_state.json"])
def test_a_missing_file_is_refused_by_name(tmp_path, parts, name):
    save(tmp_path / "ck", parts)
    (tmp_path / "ck" / name).unlink()
    with pytest.raises(CheckpointError, match=f"missing {name}"):
        load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_safetensors_file_is_refused(tmp_path, parts, name, damage):
    save(tmp_path / "ck", parts)
    f = tmp_path / "ck" / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x13\x37" * 50)
    with pytest.raises(CheckpointError, match=f"{name} is corrupt or truncated"):
        load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("name", ["config.json", "trainer_state.json"])
def test_bad_json_is_refused(tmp_path, parts, name):
    save(tmp_path / "ck", parts)
    (tmp_path / "ck" / name).write_text('{"step": 3', encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"{name} is corrupt or not valid JSON"):
        load_checkpoint(tmp_path / "ck")


def test_tensor_shapes_that_disagree_with_the_config_are_refused(tmp_path, parts):
    save(tmp_path / "ck", parts)
    meta_path = tmp_path / "ck" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["d_model"] = 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"has shape \(\d+, 32\) but the config needs \(\d+, 64\)"):
        load_checkpoint(tmp_path / "ck")


def test_a_tensor_the_config_does_not_define_is_refused(tmp_path, parts):
    save(tmp_path / "ck", parts)
    meta_path = tmp_path / "ck" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["n_layers"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tensor 'h.1.[a-z_.0-9]+' that the model config does not define"):
        load_checkpoint(tmp_path / "ck")


def test_a_corrupt_tokenizer_or_foreign_config_is_refused(tmp_path, parts):
    save(tmp_path / "ck", parts)
    (tmp_path / "ck" / "tokenizer.json").write_text('{"format": "smallmind-tokenizer", "version": 1}')
    with pytest.raises(CheckpointError, match="bad tokenizer in checkpoint"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="not a SmallMind checkpoint config"):
        load_checkpoint(tmp_path / "ck")


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_on_save(tmp_path, parts):
    with pytest.raises(CheckpointError, match="tokenizer vocabulary"):
        save(tmp_path / "ck", parts, tokenizer=train_tokenizer("char", "ab", 10))
    assert not (tmp_path / "ck").exists()


@pytest.fixture
def deadline():
    # a crafted config that makes the loader loop or allocate without end fails here, not hangs
    import signal

    def expire(signum, frame):
        raise TimeoutError("the loader did not answer within 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("key,value,message", [
    ("vocab_size", 28.0, "vocab_size must be an integer"),
    ("vocab_size", True, "vocab_size must be an integer"),
    ("context_length", 1e12, "context_length must be an integer"),
    ("context_length", 10**12, r"context_length must be an integer in \[1, 1048576\]"),
    ("n_layers", 1_000_000_000, r"n_layers must be an integer in \[1, 1024\]"),
    ("d_model", -32, "d_model must be an integer"),
    ("layer_norm_eps", -1e-5, r"layer_norm_eps must be a number in \(0, 1\]"),
    ("layer_norm_eps", "1e-5", "layer_norm_eps must be a number"),
    ("dropout", float("nan"), "dropout must be a number"),
    ("tied_head", "no", "tied_head must be true or false"),
])
def test_a_crafted_model_config_is_refused_by_key(tmp_path, parts, deadline, key, value, message):
    save(tmp_path / "ck", parts)
    meta_path = tmp_path / "ck" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["model"][key] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ck")


def test_a_config_asking_for_more_than_the_tensors_hold_is_refused_before_allocating(tmp_path, parts, deadline,
                                                                                     monkeypatch):
    save(tmp_path / "ck", parts)
    meta_path = tmp_path / "ck" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["model"].update(context_length=1 << 20, d_model=1 << 16, n_heads=2)  # 256 GiB of position table
    meta_path.write_text(json.dumps(meta))
    allocated = []
    monkeypatch.setattr(ckpt_mod, "Params", lambda *a: allocated.append(a))
    with pytest.raises(CheckpointError, match="tensor '[a-z_.0-9]+' has shape"):
        load_checkpoint(tmp_path / "ck")
    assert not allocated


def test_a_bpe_vocabulary_with_an_id_beyond_the_model_is_refused(tmp_path, parts):
    tok = train_tokenizer("bpe", TEXT * 20, 300)
    cfg = preset("tiny", vocab_size=tok.vocab_size, context_length=16, d_model=32, n_heads=2)
    save(tmp_path / "ck", parts, config=cfg, params=init_params(cfg, seed=1), tokenizer=tok)
    tok_path = tmp_path / "ck" / "tokenizer.json"
    d = json.loads(tok_path.read_text())
    vocab = d["tokenizer"]["model"]["vocab"]
    vocab[next(iter(vocab))] = cfg.vocab_size + 1000  # a byte symbol now maps beyond the embedding table
    tok_path.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=f"holds id {cfg.vocab_size + 1000}"):
        load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_weights_that_are_not_finite_are_refused_by_tensor(tmp_path, parts, bad):
    params = init_params(parts["config"], seed=1)
    params["h.1.mlp.up.weight"][3, 4] = bad
    save(tmp_path / "ck", parts, params=params)
    with pytest.raises(CheckpointError, match="weights are not finite.*'h.1.mlp.up.weight'"):
        load_checkpoint(tmp_path / "ck")


def test_a_save_over_a_checkpoint_never_leaves_the_name_without_one(tmp_path, parts, monkeypatch):
    if ckpt_mod._renameat2() is None:
        pytest.skip("no atomic directory exchange on this system (the two-rename fallback is tested above)")
    save(tmp_path / "ck", parts)
    real_rename, seen = os.rename, []

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        seen.append((tmp_path / "ck" / "config.json").exists())

    monkeypatch.setattr(os, "rename", rename)
    newer = init_params(parts["config"], seed=5)
    save(tmp_path / "ck", parts, params=newer)
    assert all(seen)  # no rename left `ck` missing (the exchange needs none)
    assert np.array_equal(load_checkpoint(tmp_path / "ck").params.flat, newer.flat)
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # the old checkpoint, swapped out, is gone


def test_without_an_atomic_exchange_a_save_falls_back_to_two_renames(tmp_path, parts, monkeypatch):
    save(tmp_path / "ck", parts)
    monkeypatch.setattr(ckpt_mod, "_renameat2", lambda: None)
    newer = init_params(parts["config"], seed=5)
    save(tmp_path / "ck", parts, params=newer)
    assert np.array_equal(load_checkpoint(tmp_path / "ck").params.flat, newer.flat)
    assert sorted(os.listdir(tmp_path)) == ["ck"]
