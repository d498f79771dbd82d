import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import smallmind
from smallmind.cli import main
from smallmind.formats.checkpoint import load_checkpoint
from smallmind.formats.text_data import stdlib_corpus
from smallmind.runtime import trainer as trainer_mod

QUICK = ["--preset", "tiny", "--tokenizer", "char", "--seq", "32", "--batch-size", "4", "--eval-batches", "2"]


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    # the machine is shared: two BLAS threads contending with other jobs can run 30x slower
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "source.txt"
    path.write_text("".join(d.text for d in stdlib_corpus(40_000)), encoding="utf-8")
    return str(path)


def train_cli(capsys, *args):
    try:
        code = main(["train", *args])
    except SystemExit as e:  # argparse refuses bad flags by exiting
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(directory):
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_json_is_the_last_line_of_stdout_with_the_figures(tmp_path, capsys, data):
    code, out, err = train_cli(capsys, "--data", data, *QUICK, "--steps", "4", "--eval-every", "2",
                               "--out", str(tmp_path / "run"), "--json")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("train_loss", "val_loss", "tok_s", "steps", "params", "out", "best_val_loss"):
        assert key in result
    assert result["steps"] == 4 and result["out"] == str(tmp_path / "run") and result["tok_s"] > 0
    assert load_checkpoint(tmp_path / "run").tokenizer.kind == "char"


def test_plain_output_summarises_the_run(tmp_path, capsys, data):
    code, out, _ = train_cli(capsys, "--data", data, *QUICK, "--steps", "2", "--out", str(tmp_path / "run"))
    assert code == 0
    assert "train loss" in out and "val loss" in out and "tok/s" in out


def test_resume_takes_the_saved_settings_for_flags_left_out(tmp_path, capsys, data):
    out_dir = str(tmp_path / "run")
    assert train_cli(capsys, "--data", data, *QUICK, "--steps", "3", "--seed", "7", "--out", out_dir)[0] == 0
    code, out, _ = train_cli(capsys, "--out", out_dir, "--resume", "--steps", "5", "--json")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["steps"] == 5 and result["tokenizer"] == "char" and result["preset"] == "tiny"
    assert load_checkpoint(tmp_path / "run" / "last").trainer_state["train_config"]["seed"] == 7


def test_ctrl_c_exits_130_with_a_resume_hint(tmp_path, capsys, data, monkeypatch):
    real_step = trainer_mod.AdamW.step

    def step(self, grads, lr):
        os.kill(os.getpid(), signal.SIGINT)
        real_step(self, grads, lr)

    monkeypatch.setattr(trainer_mod.AdamW, "step", step)
    code, _, err = train_cli(capsys, "--data", data, *QUICK, "--steps", "9", "--out", str(tmp_path / "run"))
    assert code == 130
    assert "interrupted (SIGINT) at step 1" in err and "--resume" in err
    assert load_checkpoint(tmp_path / "run" / "last").trainer_state["step"] == 1


def bad_inputs(tmp_path, data):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.bin").write_bytes(b"text\x00more")
    (tmp_path / "latin1.txt").write_bytes("olé".encode("latin-1"))
    return {
        "missing data": (["--data", str(tmp_path / "nope.txt")], "does not exist"),
        "empty data": (["--data", str(tmp_path / "empty.txt")], "holds no text"),
        "binary data": (["--data", str(tmp_path / "binary.bin")], "binary.bin is binary"),
        "non-utf8 data": (["--data", str(tmp_path / "latin1.txt")], "latin1.txt is not UTF-8"),
        "negative steps": (["--data", data, "--steps", "-3"], "--steps: expected a positive integer"),
        "zero lr": (["--data", data, "--lr", "0"], "--lr: expected a number in"),
        "unknown preset": (["--data", data, "--preset", "huge"], "invalid choice: 'huge'"),
        "unknown tokenizer": (["--data", data, "--tokenizer", "words"], "invalid choice: 'words'"),
        "seq beyond context": (["--data", data, "--preset", "tiny", "--seq", "999"], "seq must be in"),
        "resume with nothing": (["--resume"], "nothing to resume"),
        "batch beyond memory": (["--data", data, "--batch-size", "100000000"],
                                "batch size 100000000, sequence length 128 and 8 evaluation batches would need"),
        "eval batches beyond memory": (["--data", data, "--eval-batches", "100000000"],
                                       "and 100000000 evaluation batches would need"),
        "warmup beyond steps": (["--data", data, "--steps", "5", "--warmup", "10"],
                                "warmup steps (10) must not exceed steps (5)"),
    }


@pytest.mark.parametrize("case", ["missing data", "empty data", "binary data", "non-utf8 data", "negative steps",
                                  "zero lr", "unknown preset", "unknown tokenizer", "seq beyond context",
                                  "resume with nothing", "batch beyond memory", "eval batches beyond memory",
                                  "warmup beyond steps"])
def test_bad_input_is_one_stderr_line_and_exit_2_writing_nothing(tmp_path, capsys, data, case):
    args, message = bad_inputs(tmp_path, data)[case]
    code, out, err = train_cli(capsys, *args, "--out", str(tmp_path / "run"))
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "run").exists()


def trained_run(tmp_path, capsys, data):
    out_dir = tmp_path / "run"
    assert train_cli(capsys, "--data", data, *QUICK, "--steps", "2", "--out", str(out_dir))[0] == 0
    return out_dir


@pytest.mark.parametrize("extra", [[], ["--overwrite", "--data", "MISSING"], ["--seed", "3"]])
def test_an_existing_checkpoint_is_left_untouched(tmp_path, capsys, data, extra):
    out_dir = trained_run(tmp_path, capsys, data)
    before = snapshot(out_dir)
    extra = [str(tmp_path / "missing.txt") if a == "MISSING" else a for a in extra]
    args = ["--data", data, *QUICK, "--steps", "2", "--out", str(out_dir), *extra]
    code, _, err = train_cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(out_dir) == before


@pytest.mark.parametrize("damage", ["missing file", "corrupt weights", "bad trainer state"])
def test_resuming_a_damaged_checkpoint_is_refused(tmp_path, capsys, data, damage):
    out_dir = trained_run(tmp_path, capsys, data)
    last = out_dir / "last"
    if damage == "missing file":
        (last / "optimizer.safetensors").unlink()
    elif damage == "corrupt weights":
        (last / "model.safetensors").write_bytes((last / "model.safetensors").read_bytes()[:1000])
    else:
        (last / "trainer_state.json").write_text("{oops")
    before = snapshot(out_dir)
    code, _, err = train_cli(capsys, "--out", str(out_dir), "--resume", "--steps", "4")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(out_dir) == before


def test_the_installed_command_runs_in_a_subprocess(tmp_path, data):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "smallmind", "train", "--data", data, *QUICK, "--steps", "2",
            "--out", str(tmp_path / "run"), "--json"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 2
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip() == (f"smallmind train: error: {tmp_path / 'run'} already holds a checkpoint; "
                                    f"pass --resume to continue it or --overwrite to replace it")


def _cli_env():
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(smallmind.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH")]))}


def _wait_for(path, proc, seconds=60):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


TINY_RUN = ["--preset", "tiny", "--tokenizer", "char", "--seq", "16", "--batch-size", "2", "--eval-batches", "1",
            "--threads", "1"]


def test_sigterm_saves_last_says_so_and_exits_143(tmp_path, data):
    out_dir = tmp_path / "run"
    args = [sys.executable, "-m", "smallmind", "train", "--data", data, *TINY_RUN, "--steps", "100000",
            "--eval-every", "100000", "--out", str(out_dir)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env())
    _wait_for(out_dir / "loss_curve.png", proc)  # the evaluation at step 0 is saved and plotted: steps run
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    state = load_checkpoint(out_dir / "last").trainer_state
    assert state["step"] > 0
    assert f"interrupted (SIGTERM) at step {state['step']}; {out_dir}/last is saved" in err
    assert "Traceback" not in err


def test_sigkill_during_saves_always_leaves_a_checkpoint_that_loads_and_resumes(tmp_path, data):
    # every step is evaluated and saved (best and last), so most kills land inside a save
    out_dir, steps, rng = tmp_path / "run", 12, np.random.default_rng(0)
    base = [sys.executable, "-m", "smallmind", "train", "--data", data, *TINY_RUN, "--steps", str(steps),
            "--eval-every", "1", "--out", str(out_dir)]
    reached = 0
    for kill in range(3):
        proc = subprocess.Popen(base + (["--resume"] if kill else []), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=_cli_env())
        _wait_for(out_dir / "last" / "config.json", proc)
        time.sleep(float(rng.uniform(0.2, 1.0)))
        proc.kill()
        proc.communicate(timeout=60)
        for name in ("last", "best"):  # complete, whatever the moment of the kill
            assert np.isfinite(load_checkpoint(out_dir / name).params.flat).all()
        step = load_checkpoint(out_dir / "last").trainer_state["step"]
        assert step >= reached  # a resumed run continues, never goes back
        reached = step
    done = subprocess.run(base + ["--resume", "--json"], capture_output=True, text=True, env=_cli_env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == steps
    state = load_checkpoint(out_dir / "last").trainer_state
    assert state["step"] == steps and len(state["train_losses"]) == steps


def test_bf16_on_a_cpu_without_it_is_one_line_naming_the_features(tmp_path, capsys, data, monkeypatch):
    from smallmind import kernels

    monkeypatch.setattr(kernels, "bf16_support", lambda: {"avx512_bf16": False, "amx_bf16": False})
    code, out, err = train_cli(capsys, "--data", data, *QUICK, "--steps", "1", "--out", str(tmp_path / "o"),
                               "--precision", "bf16")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "AVX512-BF16 or AMX-BF16" in err
    assert not (tmp_path / "o").exists()


def test_json_reports_the_model_flops_utilisation(tmp_path, capsys, data):
    code, out, _ = train_cli(capsys, "--data", data, *QUICK, "--steps", "2", "--eval-every", "2",
                             "--out", str(tmp_path / "o"), "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["precision"] == "fp32" and result["peak_gflops"] > 0
    assert result["mfu"] == pytest.approx(result["tok_s"] * result["flops_per_token"] / (result["peak_gflops"] * 1e9))
