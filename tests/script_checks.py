"""Checks that the benchmark scripts taking --model share: a missing path is a usage error (exit 2),
a file that is no model one line on stderr naming the script (exit 1)."""


def refuses_a_missing_and_a_broken_model(run, tmp_path, script: str) -> None:
    # run(*argv) -> CompletedProcess of the script with those arguments
    missing = run("--model", str(tmp_path / "none.gguf"))
    assert missing.returncode == 2 and "no model at" in missing.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    bad = run("--model", str(broken))
    assert bad.returncode == 1 and bad.stderr.strip().startswith(f"{script}: ")
    assert len(bad.stderr.strip().splitlines()) == 1
