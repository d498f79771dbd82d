import io

import pytest

import smallmind
from model_files import smollm2_path
from smallmind.cli import main


@pytest.fixture(scope="module")
def smollm2():
    return smallmind.load(smollm2_path())


def test_piped_chat_answers_each_line_as_a_turn_of_one_conversation(smollm2, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2+2?\n\nAnd 3+3?\n"))
    assert main(["chat", "--temperature", "0", "--max-new-tokens", "12", "--ctx", "256"]) == 0
    replies = capsys.readouterr().out.splitlines()
    first = "".join(smollm2.chat([{"role": "user", "content": "What is 2+2?"}], max_new_tokens=12, temperature=0))
    assert replies[0] == first.split("\n")[0]
    # the blank line is skipped; the second answer continues the same conversation
    history = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "And 3+3?"}]
    second = "".join(smollm2.chat(history, max_new_tokens=12, temperature=0))
    assert "\n".join(replies[len(first.split("\n")):]) == second


def test_reset_forgets_the_conversation(smollm2, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\n/reset\nName a colour.\n"))
    assert main(["chat", "--temperature", "0", "--max-new-tokens", "8", "--ctx", "256"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0] == lines[-1]  # after /reset the same question gets the same first answer
    assert "reset" in out.err


def test_chat_with_a_model_without_a_template_is_one_line_and_exit_2(tmp_path, capsys):
    from smallmind.formats.checkpoint import save_checkpoint
    from smallmind.formats.tokenizer import train_tokenizer
    from smallmind.models.gpt import init_params, preset

    tokenizer = train_tokenizer("char", "abcdefgh ", 512)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size)
    save_checkpoint(tmp_path / "m", config=cfg, params=init_params(cfg), tokenizer=tokenizer)
    assert main(["chat", "--model", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.strip().endswith("has no chat template: it cannot chat")
