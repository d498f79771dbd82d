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


def test_serve_refuses_a_negative_prefix_cache(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--cache-mb", "-1"])
    assert exit_.value.code == 2 and "non-negative" in capsys.readouterr().err


def test_serve_refuses_a_prefix_cache_beyond_the_memory_in_one_line(tmp_path, capsys):
    from server_process import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "model")
    assert main(["serve", "--model", str(checkpoint), "--cache-mb", str(1 << 40)]) == 2
    err = capsys.readouterr().err
    assert "prefix cache" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, expected",
                         [([], 256 * 2**20), (["--cache-mb", "0"], 0), (["--cache-mb", "8"], 8 * 2**20)])
def test_the_prefix_cache_budget_reaches_the_engine(tmp_path, monkeypatch, argv, expected):
    from server_process import tiny_checkpoint

    from smallmind.runtime import engine_process

    seen = {}

    class Stop(Exception):
        pass

    def fake_engine(path, **options):
        seen.update(options)
        raise Stop

    monkeypatch.setattr(engine_process, "EngineProcess", fake_engine)
    checkpoint = tiny_checkpoint(tmp_path / "model")
    with pytest.raises(Stop):
        main(["serve", "--model", str(checkpoint), *argv])
    assert seen["cache_bytes"] == expected


def test_serve_runs_uvicorn_on_httptools_and_uvloop(tmp_path, monkeypatch, capsys):
    # both come with the server extra; the startup line says what runs
    import uvicorn
    from server_process import tiny_checkpoint

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: seen.update(http=server.config.http,
                                                                          loop=server.config.loop))
    checkpoint = tiny_checkpoint(tmp_path / "model")
    assert main(["serve", "--model", str(checkpoint), "--cache-mb", "0"]) == 0
    assert (seen["http"], seen["loop"]) == ("httptools", "uvloop")
    assert "HTTP on httptools, uvloop event loop" in capsys.readouterr().err


def test_serve_falls_back_to_h11_and_asyncio(tmp_path, monkeypatch, capsys):
    import uvicorn
    from server_process import tiny_checkpoint

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: seen.update(http=server.config.http,
                                                                          loop=server.config.loop))
    monkeypatch.setitem(sys.modules, "httptools", None)
    monkeypatch.setitem(sys.modules, "uvloop", None)
    checkpoint = tiny_checkpoint(tmp_path / "model")
    assert main(["serve", "--model", str(checkpoint), "--cache-mb", "0"]) == 0
    assert (seen["http"], seen["loop"]) == ("h11", "asyncio")
    assert "HTTP on h11, asyncio event loop" in capsys.readouterr().err
