"""benchmarks/sampling.py runs end to end (its figures are not asserted: a benchmark prints
them) and refuses bad input in one line with a non-zero exit."""

import subprocess
import sys
from pathlib import Path

from model_files import smollm2_path
from script_checks import refuses_a_missing_and_a_broken_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sampling.py"


def run(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300)


def test_sampling_bench_times_every_setting_and_the_decode_step():
    done = run("--model", str(smollm2_path()), "--repeats", "3", "--threads", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("CPU: ") and "vocabulary 49,152" in lines[0]
    rows = {line[:22].strip(): line[22:].split() for line in lines[2:]}
    assert list(rows) == ["greedy", "temperature 0.8", "top_k 40", "top_p 0.95", "top_k 40, top_p 0.95",
                          "top_p 0.999", "(the decode step)"]
    assert all(float(r[0]) > 0 for r in rows.values())
    assert all(r[1].endswith("%") for name, r in rows.items() if name != "(the decode step)")


def test_sampling_bench_refuses_bad_input(tmp_path):
    refuses_a_missing_and_a_broken_model(run, tmp_path, "sampling")
    for argv in (("--repeats", "0"), ("--threads", "x")):
        refused = run(*argv)
        assert refused.returncode == 2 and argv[0] in refused.stderr.strip().splitlines()[-1]
    empty = run("--model", str(smollm2_path()), "--prompt", "")
    assert empty.returncode == 1 and "the prompt is empty" in empty.stderr
    too_many = run("--model", str(smollm2_path()), "--repeats", "100000")   # more steps than its context
    assert too_many.returncode == 1 and "exceed the model's context of 8192" in too_many.stderr
    assert len(too_many.stderr.strip().splitlines()) == 1
