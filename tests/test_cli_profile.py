import copy
import json

import pytest

from smallmind.cli import main

FAST = ["--preset", "tiny", "--tokens", "4", "--prompt-tokens", "4", "--repeats", "1"]


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "prof"
    assert main(["profile", *FAST, "--train", "--train-steps", "2", "--batch", "1", "--out", str(out)]) == 0
    return out


def _one_line_error(capsys, argv, needle):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and needle in err
    return err


def test_profile_writes_report_json_and_charts(profile_dir):
    names = {p.name for p in profile_dir.iterdir()}
    assert {"profile.json", "profile.md", "time_by_scope.png", "loss_curve.png"} <= names
    data = json.loads((profile_dir / "profile.json").read_text())
    assert data["model"]["source"] == "preset tiny" and data["train"]["steps"] == 2


def test_profile_prints_an_aligned_summary(tmp_path, capsys):
    assert main(["profile", *FAST, "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "decode" in out and "tok/s" in out and "coverage" in out and "wrote" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| headline"))
    end = lines.index("", start)
    assert end - start == 10  # header, rule and the eight headline figures
    assert len({len(line) for line in lines[start:end]}) == 1  # the columns line up


def test_profile_of_a_checkpoint_times_tokenization(tmp_path, capsys):
    from smallmind.formats.checkpoint import save_checkpoint
    from smallmind.formats.tokenizer import train_tokenizer
    from smallmind.models.gpt import init_params, preset

    tokenizer = train_tokenizer("char", "the quick brown fox jumps over the lazy dog " * 10, 64)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size)
    save_checkpoint(tmp_path / "ckpt", config=cfg, params=init_params(cfg), tokenizer=tokenizer)
    out = tmp_path / "p"
    assert main(["profile", "--model", str(tmp_path / "ckpt"), "--prompt", "the lazy fox", "--tokens", "3",
                 "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads((out / "profile.json").read_text())
    tokenize = next(r for r in data["scopes"] if r["name"] == "tokenize")
    # the prompt's encoding, then each of the 3 new tokens turned back into text
    assert tokenize["calls"] == 1 + 3 and data["workload"]["prompt_tokens"] == len("the lazy fox")


def test_compare_flags_a_planted_regression(profile_dir, tmp_path, capsys):
    before = json.loads((profile_dir / "profile.json").read_text())
    after = copy.deepcopy(before)
    after["headline"]["prefill_tok_s"] /= 2
    (tmp_path / "after.json").write_text(json.dumps(after))
    report = tmp_path / "cmp.md"
    assert main(["profile", "--compare", str(profile_dir / "profile.json"), str(tmp_path / "after.json"),
                 "--out", str(report)]) == 0
    text = report.read_text()
    assert "| prefill_tok_s" in text and "-50.0%" in text and "1 regression(s): prefill_tok_s" in text


def test_compare_prints_to_stdout_without_out(profile_dir, capsys):
    path = str(profile_dir / "profile.json")
    assert main(["profile", "--compare", path, path]) == 0
    assert "0 regression(s)" in capsys.readouterr().out


def test_compare_unparseable_file_is_one_line_exit_2(profile_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("not json at all")
    _one_line_error(capsys, ["profile", "--compare", str(bad), str(profile_dir / "profile.json")], "not JSON")


def test_compare_missing_file_is_one_line_exit_2(profile_dir, tmp_path, capsys):
    _one_line_error(capsys, ["profile", "--compare", str(profile_dir / "profile.json"), str(tmp_path / "nope.json")],
                    "no such file")


@pytest.mark.parametrize("argv, needle", [
    (["profile", "--tokens", "0"], "positive integer"),
    (["profile", "--preset", "huge"], "unknown preset"),
    (["profile", "--preset", "tiny", "--model", "x"], "not allowed with"),
    (["profile", "--model", "/nonexistent/ckpt"], "does not exist"),
    (["profile", "--preset", "tiny", "--prompt", "hi"], "--prompt needs --model"),
    (["profile", "--preset", "tiny", "--tokens", "60", "--prompt-tokens", "10"], "context length"),
    (["profile", "--bogus"], "unrecognized arguments"),
    (["profile", "--preset", "tiny", "--seed", "-1"], "--seed: expected a non-negative integer"),
    (["profile", "--preset", "tiny", "--prompt-tokens", "1000000000000", "--tokens", "2"],
     "1000000000000 prompt tokens + 2 new tokens exceed the context length 64"),
    (["profile", "--preset", "tiny", "--tokens", "1", "--prompt-tokens", "4"], "at least 2 tokens"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, tmp_path, capsys):
    out = tmp_path / "out"
    code = None
    try:
        code = main([*argv, "--out", str(out)])
    except SystemExit as e:  # argparse errors exit from inside parse_args
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and needle in err
    assert not out.exists()  # nothing written


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert main(["profile", *FAST, "--out", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err and target.read_text() == "keep me"


def test_compare_out_that_is_a_directory_is_refused(profile_dir, capsys):
    path = str(profile_dir / "profile.json")
    assert main(["profile", "--compare", path, path, "--out", str(profile_dir)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_train_on_a_gguf_file_is_one_line_exit_2(tmp_path, capsys):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["profile", "--model", str(model), "--train", "--out", str(out)],
                          "--train profiles the trainable GPT")
    assert "model.gguf" in err and not out.exists()
