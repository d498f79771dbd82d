"""`smallmind doctor` prints the kernel path, CPU features and BLAS; --json parses."""

import json
import os
import subprocess
import sys

import pytest

from smallmind import kernels
from smallmind.cli import main


def test_doctor_prints_path_and_features(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"kernel path  : {kernels.path}" in out
    expect = kernels._backend.quant_isa() if kernels._backend else "numpy"
    assert f"quantized    : {expect} " in out
    expect = kernels._backend.gemm_isa() if kernels._backend else "numpy"
    assert f"gemm         : {expect} " in out
    info = kernels.get_info()
    for name, present in info["cpu_features"].items():
        if present:
            assert name in out.split("cpu features : ")[1].splitlines()[0].split()
    assert "blas" in out


def test_doctor_json_is_one_object_with_the_path(capsys):
    assert main(["doctor", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    info = json.loads(out)
    assert info["kernel_path"] == kernels.path
    assert info["threads"] == kernels.get_threads()
    assert set(info) >= {"cpu", "cpu_features", "blas", "compiler", "native_threads"}


def test_doctor_reports_the_numpy_path_when_forced():
    env = {**os.environ, "SMALLMIND_KERNELS": "numpy"}
    res = subprocess.run([sys.executable, "-m", "smallmind", "doctor", "--json"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["kernel_path"] == "numpy"
    assert info["quant_kernels"] == info["gemm_kernels"] == "numpy"
    assert info["native_available"] is False
    assert "avx2" in info["cpu_features"] or info["machine"] != "x86_64"


def test_doctor_rejects_unknown_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bogus" in err


@pytest.mark.parametrize("mode,huge", [("madvise", True), ("never", False), (None, False)])
def test_doctor_says_whether_gguf_weights_get_huge_pages(capsys, monkeypatch, mode, huge):
    from smallmind import memory

    monkeypatch.setattr(memory, "transparent_huge_pages", lambda path=None: mode)
    monkeypatch.setattr(memory, "huge_pages_for_large_arrays", lambda: huge)
    assert main(["doctor"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("huge pages"))
    assert (mode or "not Linux") in line
    assert ("read into memory on 2 MiB pages" in line) is huge and ("stay mapped" in line) is not huge
    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transparent_huge_pages"] == mode and info["gguf_weights_on_huge_pages"] is huge
