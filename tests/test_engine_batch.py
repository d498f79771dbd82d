"""benchmarks/engine_batch.py runs end to end (its figures are not asserted: a benchmark prints
them) and refuses bad input in one line with a non-zero exit."""

import subprocess
import sys
from pathlib import Path

from script_checks import refuses_a_missing_and_a_broken_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_batch.py"


def run(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300)


def test_engine_batch_reports_every_round_and_the_median_ratio():
    done = run("--tokens", "4", "--seconds", "0.5", "--rounds", "2", "--streams", "2", "--threads", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("CPU: ") and "2 slots, max_tokens 4" in lines[0]
    rounds = [line.split() for line in lines[2:4]]
    assert [r[0] for r in rounds] == ["1", "2"] and all(r[3].endswith("x") for r in rounds)
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rounds)   # each phase generated in its time
    assert lines[4].startswith("2 streams / 1 stream aggregate tok/s: median ")


def test_engine_batch_refuses_a_missing_model_and_too_many_streams(tmp_path):
    refuses_a_missing_and_a_broken_model(run, tmp_path, "engine_batch")
    many = run("--streams", "100000", "--tokens", "1")
    assert many.returncode == 1 and "--streams must be 1.." in many.stderr
    long = run("--tokens", "100000")   # past the seed preset's context of 128
    assert long.returncode == 1 and long.stderr.startswith("engine_batch: this model's context is 128 tokens")
    assert len(long.stderr.strip().splitlines()) == 1
    for seconds in ("0", "-1", "nan", "inf", "soon"):
        bad_time = run("--seconds", seconds)
        assert bad_time.returncode == 2 and "--seconds" in bad_time.stderr.strip().splitlines()[-1]

