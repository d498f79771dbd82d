import pytest

from smallmind.models.gpt import init_params, preset


def test_bench_train_reports_consistent_figures():
    from smallmind.bench.train import bench_train

    result = bench_train("tiny", repeats=1, warmup=0, steps_per_repeat=1)
    assert result["params"] == init_params(preset("tiny")).count
    assert (result["batch"], result["seq"]) == (16, 64)
    assert result["tok_s"] == pytest.approx(16 * 64 / (result["ms_per_step"] / 1e3), rel=0.01)
    assert result["threads"] >= 1 and result["kernel_path"]
