import json
import os
import signal

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from smallmind.errors import CheckpointError, DataError, SmallMindError
from smallmind.formats.checkpoint import load_checkpoint
from smallmind.models.gpt import init_params, preset
from smallmind.runtime import trainer as trainer_mod
from smallmind.runtime.trainer import TrainConfig, train

# a small, fast run on real text: the first 60k characters of the stdlib corpus
QUICK = dict(preset="tiny", tokenizer="char", seq=32, batch_size=4, eval_batches=2, max_corpus_chars=60_000)


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    # the machine is shared: two BLAS threads contending with other jobs can run 30x slower
    with threadpool_limits(limits=1):
        yield


def run(tmp_path=None, name="out", **changes):
    out = None if tmp_path is None else str(tmp_path / name)
    return train(TrainConfig(**{**QUICK, "out": out, **changes}), progress=False)


def history(out):
    return load_checkpoint(out / "last").trainer_state


def test_the_same_seed_gives_bit_identical_runs(tmp_path):
    a = run(tmp_path, "a", steps=5, eval_every=5, dropout=0.1, grad_accum=2, tokenizer="bpe")
    b = run(tmp_path, "b", steps=5, eval_every=5, dropout=0.1, grad_accum=2, tokenizer="bpe")
    assert a["tokenizer"] == "bpe" and a["vocab_size"] == 512
    assert history(tmp_path / "a")["train_losses"] == history(tmp_path / "b")["train_losses"]
    assert a["val_loss"] == b["val_loss"]
    assert np.array_equal(load_checkpoint(tmp_path / "a" / "last").params.flat,
                          load_checkpoint(tmp_path / "b" / "last").params.flat)


def test_a_different_seed_gives_a_different_run():
    assert run(steps=3, eval_every=3, seed=0)["last_step_loss"] != run(steps=3, eval_every=3, seed=1)["last_step_loss"]


def interrupt_after(monkeypatch, n_steps):
    # Ctrl-C arrives while the n-th optimizer step runs
    real_step, calls = trainer_mod.AdamW.step, []

    def step(self, grads, lr):
        calls.append(lr)
        if len(calls) == n_steps:
            os.kill(os.getpid(), signal.SIGINT)
        real_step(self, grads, lr)

    monkeypatch.setattr(trainer_mod.AdamW, "step", step)


def test_ctrl_c_finishes_the_step_saves_last_and_stops(tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 3)
    result = run(tmp_path, steps=10, eval_every=4)
    assert result["interrupted"] and result["steps"] == 3
    state = history(tmp_path / "out")
    assert state["step"] == 3 and len(state["train_losses"]) == 3


def test_resuming_continues_exactly_like_the_uninterrupted_run(tmp_path, monkeypatch):
    changes = dict(steps=6, eval_every=4, dropout=0.1, grad_accum=2, warmup_steps=2)
    whole = run(tmp_path, "whole", **changes)
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        assert run(tmp_path, "split", **changes)["steps"] == 3
    resumed = run(tmp_path, "split", resume=True, **changes)
    assert resumed["steps"] == 6 and not resumed["interrupted"]
    a, b = history(tmp_path / "whole"), history(tmp_path / "split")
    assert a["train_losses"] == b["train_losses"]
    assert a["evals"] == b["evals"]
    assert resumed["val_loss"] == whole["val_loss"]
    for name in ("last", "best"):
        assert np.array_equal(load_checkpoint(tmp_path / "whole" / name).params.flat,
                              load_checkpoint(tmp_path / "split" / name).params.flat)
    assert np.array_equal(load_checkpoint(tmp_path / "whole" / "last").optimizer_state["v"],
                          load_checkpoint(tmp_path / "split" / "last").optimizer_state["v"])


def test_resume_refuses_a_changed_config_or_changed_data(tmp_path):
    run(tmp_path, steps=2, eval_every=2)
    with pytest.raises(SmallMindError, match="batch_size is 8 but the run was started with 4"):
        run(tmp_path, steps=4, eval_every=2, resume=True, batch_size=8)
    with pytest.raises(SmallMindError, match="training data differs"):
        run(tmp_path, steps=4, eval_every=2, resume=True, max_corpus_chars=50_000)


def test_resume_without_a_last_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run(tmp_path, steps=2, resume=True)


def test_an_existing_checkpoint_is_kept_unless_resume_or_overwrite(tmp_path):
    run(tmp_path, steps=2, eval_every=2)
    before = (tmp_path / "out" / "last" / "model.safetensors").read_bytes()
    with pytest.raises(SmallMindError, match="already holds a checkpoint"):
        run(tmp_path, steps=2, eval_every=2, seed=5)
    assert (tmp_path / "out" / "last" / "model.safetensors").read_bytes() == before
    run(tmp_path, steps=2, eval_every=2, seed=5, overwrite=True)
    assert (tmp_path / "out" / "last" / "model.safetensors").read_bytes() != before


def test_the_out_dir_holds_best_last_and_a_loss_curve(tmp_path):
    result = run(tmp_path, steps=6, eval_every=3)
    out = tmp_path / "out"
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evals = history(out)["evals"]
    assert [e["step"] for e in evals] == [0, 3, 6]
    best = min(evals, key=lambda e: e["val"])
    assert result["best_val_loss"] == best["val"] and result["best_step"] == best["step"]
    assert load_checkpoint(out).trainer_state["step"] == best["step"]
    assert load_checkpoint(out / "last").optimizer_state["step"] == 6
    assert load_checkpoint(out).optimizer_state is None


def test_the_result_reports_losses_speed_and_size(monkeypatch):
    from types import SimpleNamespace

    clock = SimpleNamespace(now=0.0)

    def perf_counter():  # each read moves the clock 1/16 s: a timed step takes 1/16 s
        clock.now += 0.0625
        return clock.now

    monkeypatch.setattr(trainer_mod, "time", SimpleNamespace(perf_counter=perf_counter))
    result = run(steps=4, eval_every=2)
    assert result["steps"] == 4 and result["tokens"] == 4 * 4 * 32
    assert result["train_seconds"] == pytest.approx(4 * 0.0625)
    assert result["tok_s"] == pytest.approx(4 * 4 * 32 / (4 * 0.0625))
    assert result["params"] == init_params(preset("tiny", vocab_size=result["vocab_size"])).count
    assert np.isfinite(result["train_loss"]) and np.isfinite(result["val_loss"])
    json.dumps(result)


def test_a_diverging_loss_stops_training_with_a_clear_error(tmp_path, monkeypatch):
    real_forward, calls = trainer_mod.gpt_train.forward, []

    def forward(*args, **kwargs):
        loss = real_forward(*args, **kwargs)
        calls.append(loss)
        return float("nan") if kwargs.get("dropout_rng") is not None and len(calls) > 6 else loss

    monkeypatch.setattr(trainer_mod.gpt_train, "forward", forward)
    with pytest.raises(SmallMindError, match="training diverged: the loss is nan at step"):
        run(tmp_path, steps=10, eval_every=2)
    assert np.isfinite(load_checkpoint(tmp_path / "out" / "last").params.flat).all()


@pytest.mark.parametrize("change, message", [
    (dict(steps=0), "steps must be at least 1"),
    (dict(max_lr=0.0), "learning rate must be positive"),
    (dict(seq=65), r"seq must be in \[1, 64\]"),
    (dict(tokenizer="words"), "unknown tokenizer"),
    (dict(preset="giant"), "unknown preset"),
    (dict(resume=True, overwrite=True), "not both"),
    (dict(min_lr=1.0), "min lr"),
    (dict(steps=10, warmup_steps=11), r"warmup steps \(11\) must not exceed steps \(10\)"),
    (dict(steps=2.5), "steps must be an integer, got 2.5"),
    (dict(steps=True), "steps must be an integer, got True"),
    (dict(seed=-1), "seed must be a non-negative integer"),
    (dict(data=123), "data must be a path or None, got 123"),
    (dict(max_lr=float("inf")), "max_lr must be a finite number"),
    (dict(resume="yes"), "resume must be True or False"),
])
def test_nonsense_settings_are_refused(change, message):
    with pytest.raises(SmallMindError, match=message):
        run(**change)


def test_train_refuses_what_is_not_a_train_config():
    with pytest.raises(SmallMindError, match="train needs a TrainConfig, got dict"):
        train(QUICK)


def test_data_too_short_for_one_window_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("just a few characters of text, far too few\n" * 3)
    with pytest.raises(DataError, match="validation split has"):
        run(data=str(tmp_path / "t.txt"), steps=1)


def unigram_entropy(tokens):
    # nats per token of the best model that ignores context
    p = np.bincount(tokens) / tokens.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_a_tiny_model_learns_stdlib_source_far_below_its_unigram_entropy():
    from smallmind.formats.text_data import load_documents, split_documents
    from smallmind.formats.tokenizer import train_tokenizer

    corpus = 1_000_000
    train_text, val_text = split_documents(load_documents(None, max_chars=corpus))
    val_tokens = train_tokenizer("char", train_text + val_text, 512).encode(val_text)
    entropy = unigram_entropy(val_tokens)
    result = train(TrainConfig(preset="tiny", tokenizer="char", steps=200, eval_every=100, max_lr=3e-3,
                               max_corpus_chars=corpus), progress=False)
    assert entropy > 3.0
    assert result["val_loss"] < entropy - 0.8


def test_resume_with_more_steps_keeps_the_defaults_the_run_started_with(tmp_path):
    run(tmp_path, steps=20, eval_every=20)
    result = run(tmp_path, steps=24, eval_every=20, resume=True)
    assert result["steps"] == 24
    state = history(tmp_path / "out")
    assert state["train_config"]["warmup_steps"] == 2 and len(state["train_losses"]) == 24


def test_an_out_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(SmallMindError, match="exists and is not a directory"):
        run(tmp_path, steps=1)


def test_log_gets_one_line_per_evaluation():
    lines = []
    result = train(TrainConfig(**{**QUICK, "steps": 6, "eval_every": 2}), progress=False, log=lines.append)
    assert len(lines) == 4  # steps 0, 2, 4, 6
    assert lines[0].startswith("step 0/") and "val loss" in lines[0] and "tok/s" not in lines[0]
    assert lines[-1].startswith(f"step {result['steps']}/") and lines[-1].endswith("tok/s")
    assert f"val loss {result['val_loss']:.4f}" in lines[-1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "out"
    run(out.parent, name="out", steps=2, eval_every=1)
    return out


@pytest.mark.parametrize("key,value", [
    ("step", "x"),
    ("step", -1),
    ("best_step", 99),
    ("best_val_loss", "low"),
    ("sampler_state", {"bit_generator": "PCG64", "state": "nope"}),
    ("dropout_state", [1, 2]),
    ("train_losses", [1.0]),
    ("evals", [{"step": 1, "train": "x", "val": 2.0}]),
    ("evals", {"step": 1}),
    ("train_config", "fast"),
    ("train_config", {"steps": 4}),
    ("data_fingerprint", 7),
    ("evals", None),
])
def test_a_corrupt_trainer_state_is_refused_by_key_before_training(tmp_path, finished_run, monkeypatch, key, value):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    path = out / "last" / "trainer_state.json"
    state = json.loads(path.read_text())
    state[key] = value
    path.write_text(json.dumps(state))
    monkeypatch.setattr(trainer_mod, "_train_step", lambda *a: pytest.fail("a step ran before the state was checked"))
    with pytest.raises(CheckpointError, match=f"trainer state's '{key}'"):
        run(tmp_path, steps=4, eval_every=1, resume=True)


def test_a_corrupt_optimizer_step_is_refused(tmp_path, finished_run):
    import shutil

    from smallmind.formats.checkpoint import _optimizer_bytes, _read_safetensors

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    path = out / "last" / "optimizer.safetensors"
    arrays, _ = _read_safetensors(path)
    path.write_bytes(_optimizer_bytes({**arrays, "step": "x"}))
    with pytest.raises(CheckpointError, match="optimizer state's step must be a non-negative integer"):
        run(tmp_path, steps=4, eval_every=1, resume=True)


def test_bf16_is_refused_with_the_missing_features_on_a_cpu_without_them(monkeypatch):
    monkeypatch.setattr(trainer_mod.kernels, "bf16_support", lambda: {"avx512_bf16": False, "amx_bf16": False})
    with pytest.raises(SmallMindError, match="needs a CPU with AVX512-BF16 or AMX-BF16 enabled by the OS"):
        run(steps=1, eval_every=1, precision="bf16")


def test_bf16_trains_close_to_float32_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(trainer_mod.kernels, "bf16_support", lambda: {"avx512_bf16": True, "amx_bf16": False})
    fp32 = run(steps=20, eval_every=20)
    bf16 = run(steps=20, eval_every=20, precision="bf16")
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert bf16["val_loss"] != fp32["val_loss"]
    assert abs(bf16["val_loss"] - fp32["val_loss"]) / fp32["val_loss"] < 0.01


def test_mfu_is_achieved_flops_over_the_given_peak_in_the_result_and_log():
    from smallmind.models.gpt_train import train_flops_per_token

    lines = []
    result = train(TrainConfig(**{**QUICK, "steps": 2, "eval_every": 2}), progress=False, log=lines.append,
                   peak_gflops=50.0)
    assert result["flops_per_token"] == train_flops_per_token(preset("tiny", vocab_size=result["vocab_size"]), 32)
    assert result["mfu"] == pytest.approx(result["tok_s"] * result["flops_per_token"] / 50e9)
    assert f"MFU {100 * result['mfu']:.1f}%" in lines[-1]
    assert run(steps=1, eval_every=1)["mfu"] is None  # no peak given, no utilisation


def test_train_flops_per_token_counts_six_per_product_weight_and_the_attention_square():
    from smallmind.models.gpt import GPTConfig
    from smallmind.models.gpt_train import train_flops_per_token

    cfg = GPTConfig(vocab_size=10, context_length=8, d_model=4, n_layers=2, n_heads=2)
    weights = 2 * (3 * 16 + 16 + 4 * 16 + 4 * 16) + 10 * 4  # qkv, proj, up, down per layer; the tied head
    assert train_flops_per_token(cfg, 8) == 6 * weights + 12 * 2 * 8 * 4


def test_a_checkpoint_from_before_the_precision_setting_resumes_as_fp32(tmp_path):
    from smallmind.formats.checkpoint import save_checkpoint

    run(tmp_path, steps=2, eval_every=2)
    ckpt = load_checkpoint(tmp_path / "out" / "last")
    state = ckpt.trainer_state
    del state["train_config"]["precision"]
    save_checkpoint(tmp_path / "out" / "last", config=ckpt.params.cfg, params=ckpt.params, tokenizer=ckpt.tokenizer,
                    optimizer_state=ckpt.optimizer_state, trainer_state=state)
    result = run(tmp_path, steps=4, eval_every=2, resume=True)
    assert (result["steps"], result["precision"]) == (4, "fp32")
