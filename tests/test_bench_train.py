from types import SimpleNamespace

import numpy as np
import pytest

from smallmind.bench import train as bench_train_mod
from smallmind.bench.train import TrainStep, bench_train
from smallmind.models.gpt import init_params, preset


def test_bench_train_reports_the_median_step_time_of_the_measured_repeats(monkeypatch):
    # a scripted clock: one warm-up step of 100 s (not counted), then repeats whose steps take
    # 0.1, 0.3 and 0.2 s: the median step is 0.2 s
    clock = SimpleNamespace(now=0.0)
    durations = iter([100.0] + [0.1] * 2 + [0.3] * 2 + [0.2] * 2)

    def run(self):
        clock.now += next(durations)
        return 0.0

    monkeypatch.setattr(bench_train_mod, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    monkeypatch.setattr(TrainStep, "run", run)
    result = bench_train("tiny", repeats=3, warmup=1, steps_per_repeat=2)
    assert next(durations, None) is None  # exactly warm-up + repeats x steps were run
    assert result["ms_per_step"] == pytest.approx(200.0)
    assert result["tok_s"] == pytest.approx(16 * 64 / 0.2)
    assert result["params"] == init_params(preset("tiny")).count
    assert (result["batch"], result["seq"]) == (16, 64)


def test_the_benchmarked_step_is_a_real_training_step():
    step = TrainStep(preset("tiny"), batch=2, seq=8)
    losses = [step.run() for _ in range(6)]
    assert losses[0] == pytest.approx(np.log(preset("tiny").vocab_size), abs=0.3)  # random init: uniform
    assert losses[-1] < losses[0] - 0.1  # it learns its one batch


def test_bench_train_reports_the_mfu_against_the_given_peak():
    from smallmind.models.gpt_train import train_flops_per_token

    result = bench_train("tiny", repeats=1, warmup=0, steps_per_repeat=1, peak_gflops=20.0)
    expect = result["tok_s"] * train_flops_per_token(preset("tiny"), 64) / 20e9
    assert result["precision"] == "fp32" and result["peak_gflops"] == 20.0
    assert result["mfu"] == pytest.approx(expect, rel=1e-3)


def test_bench_train_refuses_bf16_on_a_cpu_without_it(monkeypatch):
    from smallmind.errors import SmallMindError
    from smallmind.runtime import trainer

    monkeypatch.setattr(trainer.kernels, "bf16_support", lambda: {"avx512_bf16": False, "amx_bf16": False})
    with pytest.raises(SmallMindError, match="AVX512-BF16 or AMX-BF16"):
        bench_train("tiny", precision="bf16", peak_gflops=1.0)


def test_the_benchmarked_bf16_step_learns_its_batch():
    step = TrainStep(preset("tiny"), batch=2, seq=8, precision="bf16")
    losses = [step.run() for _ in range(6)]
    assert step.ws.precision == "bf16" and losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("argv, message", [
    (["bench", "train", "--preset", "tiny", "--precision", "bf16"], "AVX512-BF16 or AMX-BF16"),
    (["bench", "decode", "--preset", "tiny", "--precision", "bf16"], "--precision applies to bench train only"),
])
def test_bench_cli_refuses_bf16_in_one_line(capsys, monkeypatch, argv, message):
    from smallmind.cli import main
    from smallmind.runtime import trainer

    monkeypatch.setattr(trainer.kernels, "bf16_support", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and err.strip().count("\n") == 0


def test_bench_cli_train_json_ends_with_tok_s_and_mfu(capsys):
    import json

    from smallmind.cli import main

    assert main(["bench", "train", "--preset", "tiny", "--repeats", "1", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tok_s"] > 0 and 0 < result["mfu"] and result["precision"] == "fp32"
