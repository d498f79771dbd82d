"""The command's shared behaviour (smallmind/cli/__init__.py): output errors, closed pipes, --threads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import smallmind
from smallmind import kernels
from smallmind.cli import main, thread_budget, usable_cpus
from smallmind.formats.checkpoint import save_checkpoint
from smallmind.formats.tokenizer import train_tokenizer
from smallmind.models.gpt import init_params, preset


def env():
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(smallmind.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    tokenizer = train_tokenizer("char", "the quick brown fox jumps over the lazy dog\n", 512)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(path, config=cfg, params=init_params(cfg, seed=1), tokenizer=tokenizer)
    return path


def commands(checkpoint_dir, data_file):
    return {
        "doctor": ["doctor"],
        "generate": ["generate", "the", "--model", str(checkpoint_dir), "--max-new-tokens", "20", "--seed", "1"],
        "train --json": ["train", "--data", str(data_file), "--preset", "tiny", "--tokenizer", "char", "--seq", "8",
                         "--batch-size", "2", "--eval-batches", "1", "--steps", "1", "--out",
                         str(data_file.parent / "run"), "--json"],
    }


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    return path


@pytest.mark.parametrize("command", ["doctor", "generate", "train --json"])
def test_a_full_output_device_is_one_line_and_exit_2(checkpoint_dir, data_file, command):
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "smallmind", *commands(checkpoint_dir, data_file)[command]],
                             stdout=full, stderr=subprocess.PIPE, text=True, env=env(), timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].endswith("error: cannot write the output: No space left on device")
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr


@pytest.mark.parametrize("command", ["doctor", "generate"])
def test_a_closed_pipe_ends_quietly(checkpoint_dir, data_file, command):
    proc = subprocess.Popen([sys.executable, "-m", "smallmind", *commands(checkpoint_dir, data_file)[command]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    proc.stdout.close()  # the reader is gone before the first byte: `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert err == ""


def test_threads_beyond_the_usable_cpus_are_reduced_with_a_note(capsys):
    usable = min(usable_cpus(), kernels.MAX_THREADS)
    assert thread_budget(10**20, "generate") == usable
    err = capsys.readouterr().err
    assert err == (f"smallmind generate: note: --threads {10**20} is more than the {usable} CPUs this process may "
                   f"use; using {usable}\n")
    assert thread_budget(1, "generate") == 1 and capsys.readouterr().err == ""
    assert thread_budget(None, "generate") is None


def test_generate_with_absurd_threads_runs_on_the_usable_cpus(checkpoint_dir, data_file, capsys):
    before = kernels.get_threads()
    try:
        code = main([*commands(checkpoint_dir, data_file)["generate"], "--threads", "99999999999999999999"])
        assert code == 0 and kernels.get_threads() == min(usable_cpus(), kernels.MAX_THREADS)
        assert "note: --threads 99999999999999999999 is more than" in capsys.readouterr().err
    finally:
        kernels.set_threads(before)


def test_the_kernels_refuse_more_threads_than_the_pool_holds():
    with pytest.raises(smallmind.SmallMindError, match=f"at most {kernels.MAX_THREADS}"):
        kernels.set_threads(kernels.MAX_THREADS + 1)


@pytest.mark.parametrize("argv", [["generate", "hi"], ["chat"], ["serve"], ["perplexity"], ["bench", "decode"],
                                  ["profile"]], ids=lambda a: a[0])
def test_mmap_flag_reaches_load_and_its_absence_lets_load_decide(argv, tmp_path, monkeypatch, capsys):
    from smallmind.errors import SmallMindError
    from smallmind.runtime import engine_process
    from smallmind.runtime import model as model_module

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    asked = []

    def fake_load(path=None, *, mmap=None):
        asked.append(mmap)
        raise SmallMindError("stopped after load was asked")

    monkeypatch.setattr(model_module, "load", fake_load)
    # serve loads the model in its engine's process (runtime/engine_process.py), from what it is given
    monkeypatch.setattr(engine_process, "EngineProcess",
                        lambda path, *, mmap=None, **options: fake_load(path, mmap=mmap))
    for flag, expect in ((["--mmap"], True), ([], None)):
        assert main(argv + ["--model", str(model)] + flag) == 2
        assert "stopped after load was asked" in capsys.readouterr().err
        assert asked.pop() is expect
