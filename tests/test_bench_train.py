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
