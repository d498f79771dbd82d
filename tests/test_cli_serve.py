import sys

import pytest

from smallmind.cli import main


def test_serve_without_the_server_extra_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)   # an import of it now fails
    assert main(["serve", "--model", "nowhere"]) == 2
    assert "pip install 'smallmind[server]'" in capsys.readouterr().err


def test_serve_refuses_a_missing_model_in_one_line(capsys):
    assert main(["serve", "--model", "/nonexistent/model.gguf"]) == 2
    err = capsys.readouterr().err
    assert "no model at" in err and len(err.strip().splitlines()) == 1


def test_serve_refuses_more_slots_than_the_context(tmp_path, capsys):
    from server_process import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "model")
    assert main(["serve", "--model", str(checkpoint), "--ctx", "8", "--parallel", "9"]) == 2
    assert "--parallel must be 1..8" in capsys.readouterr().err


def test_serve_refuses_a_port_out_of_range(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "70000"])
    assert exit_.value.code == 2 and "1..65535" in capsys.readouterr().err
