"""benchmarks/serve_load.py runs end to end against a real server process (its figures are not
asserted: a benchmark prints them) and refuses bad settings in one line with a non-zero exit."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from script_checks import refuses_a_missing_and_a_broken_model
from side_by_side import positive_float

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


def run(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=600)


def test_serve_load_reports_timed_phases_and_the_load_phase():
    done = run("--seconds", "1", "--rounds", "1", "--tokens", "4", "--clients", "3", "--parallel", "2",
               "--threads", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert "; CPU: " in lines[0]   # the figures name the CPU they come from
    # phase name, then requests, complete, tokens, tok/s, TTFT p50, TTFT max, wall s
    rows = {line[:14].strip(): line[14:].split() for line in lines[2:5]}
    assert list(rows) == ["1 stream #1", "8 streams #1", "3 clients"]
    for name in ("1 stream #1", "8 streams #1"):
        requests, complete, tokens, *_, wall = rows[name]
        assert int(requests) >= 1 and complete == requests and int(tokens) > 0
        assert wall == "1.00"   # a timed phase's tokens/s is over its --seconds
    assert rows["3 clients"][:2] == ["3", "3"]
    assert "median" in lines[5] and lines[6] == "requests lost or incomplete: 0"


@pytest.mark.parametrize("value", ["0", "-2", "nan", "inf", "later"])
def test_positive_float_refuses_what_is_not_a_finite_number_above_0(value):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(value)


def test_positive_float_takes_a_number_above_0():
    assert positive_float("0.25") == 0.25 and positive_float("10") == 10.0


def test_serve_load_refuses_bad_seconds_and_a_missing_or_broken_model(tmp_path):
    refused = run("--seconds", "0")
    assert refused.returncode == 2 and "--seconds" in refused.stderr.strip().splitlines()[-1]
    refuses_a_missing_and_a_broken_model(run, tmp_path, "serve_load")   # the broken one: the server's own word
