import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from smallmind.cli import main
from smallmind.errors import ContextLengthError, SmallMindError, TokenizerError
from smallmind.formats.checkpoint import save_checkpoint
from smallmind.formats.tokenizer import train_tokenizer
from smallmind.models.gpt import Workspace, forward, init_params, preset
from smallmind.runtime.kv_cache import KVCache
from smallmind.runtime.generate import Detokenizer, StopGuard, generate

TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs!\n"


def kv_cache(cfg):
    return KVCache(cfg.n_layers, cfg.n_heads, cfg.context_length, cfg.head_dim)


@pytest.fixture(scope="module")
def model():
    tokenizer = train_tokenizer("char", TEXT, 512)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size)
    return cfg, init_params(cfg, seed=7), tokenizer


@pytest.fixture(scope="module")
def bpe_model():
    text = "naïve café: 日本語のテキスト, emoji 🙂🚀 and plain words. " * 20
    tokenizer = train_tokenizer("bpe", text, 300)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size)
    return cfg, init_params(cfg, seed=8), tokenizer


def greedy_ids_without_cache(model, prompt, n):
    # the greedy continuation recomputed from scratch at every step (no KV cache reuse)
    cfg, params, tokenizer = model
    ids = tokenizer.encode(prompt).tolist()
    for _ in range(n):
        ws, kv = Workspace(cfg, len(ids)), kv_cache(cfg)
        ids.append(int(forward(params, ws, kv, np.array(ids, np.int32), 0).argmax()))
    return ids[-n:]


def test_greedy_generation_streams_the_greedy_continuation(model):
    pieces = generate(model, "the lazy ", max_new_tokens=20, temperature=0.0)
    assert isinstance(pieces, Iterator)
    pieces = list(pieces)
    assert all(pieces)
    expected = model[2].decode(greedy_ids_without_cache(model, "the lazy ", 20))
    assert "".join(pieces) == expected


def test_same_seed_gives_the_same_text_and_another_seed_another(model):
    a, b, c = ("".join(generate(model, "fox", max_new_tokens=30, seed=s, top_k=20)) for s in (1, 1, 2))
    assert a == b
    assert a != c
    assert len(a) == 30


def test_stop_string_ends_generation_and_is_not_emitted(model):
    full = "".join(generate(model, "the ", max_new_tokens=40, temperature=0.0))
    stop = full[10:13]  # three characters: with a char tokenizer it arrives split across three pieces
    pieces = list(generate(model, "the ", max_new_tokens=40, temperature=0.0, stop=stop))
    assert "".join(pieces) == full[:full.index(stop)]
    assert all(stop not in piece for piece in pieces)


def test_the_earliest_of_several_stop_strings_wins(model):
    full = "".join(generate(model, "the ", max_new_tokens=40, temperature=0.0))
    late, early = full[20:22], full[5:7]
    out = "".join(generate(model, "the ", max_new_tokens=40, temperature=0.0, stop=[late, early]))
    assert out == full[:min(full.index(early), full.index(late))]


def test_a_stop_string_that_never_completes_is_emitted_in_the_end(model):
    full = "".join(generate(model, "the ", max_new_tokens=25, temperature=0.0))
    stop = full[-2:] + "\x00"  # its start is held back until the end, then released
    assert "".join(generate(model, "the ", max_new_tokens=25, temperature=0.0, stop=stop)) == full


def test_stop_guard_holds_a_possible_start_of_a_stop_string():
    guard = StopGuard(("END",))
    assert guard.push("abc E") == "abc "
    assert guard.push("N") == ""
    assert guard.push("x") == "ENx"
    assert guard.push("yyE") == "yy"
    assert guard.push("ND tail") == ""
    assert guard.stopped


def test_multibyte_characters_split_across_tokens_are_held_until_complete(bpe_model):
    tokenizer = bpe_model[2]
    text = "🙂 日本 ü"
    ids = tokenizer.encode(text).tolist()
    assert len(ids) > len(text)  # some characters really are split over several byte tokens
    detokenizer = Detokenizer(tokenizer)
    pieces = [detokenizer.push(i) for i in ids]
    assert "".join(pieces) + detokenizer.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # something was held back


def test_pieces_join_to_the_decoded_generation(bpe_model):
    cfg, params, tokenizer = bpe_model
    pieces = list(generate(bpe_model, "café ", max_new_tokens=40, temperature=0.0))
    assert "".join(pieces) == tokenizer.decode(greedy_ids_without_cache(bpe_model, "café ", 40))


def test_a_checkpoint_like_object_is_accepted(model):
    cfg, params, tokenizer = model
    ckpt = SimpleNamespace(config=cfg, params=params, tokenizer=tokenizer, optimizer_state=None)
    assert "".join(generate(ckpt, "dog", max_new_tokens=5, temperature=0.0)) == \
        "".join(generate(model, "dog", max_new_tokens=5, temperature=0.0))


def test_prompt_plus_generation_beyond_the_context_raises_up_front(model):
    ctx = model[0].context_length
    with pytest.raises(ContextLengthError, match=f"context length of {ctx}"):
        generate(model, "the " * 10, max_new_tokens=ctx - 39)
    assert len("".join(generate(model, "the " * 10, max_new_tokens=ctx - 40, temperature=0.0))) == ctx - 40


def test_empty_prompt_is_refused(model):
    with pytest.raises(SmallMindError, match="prompt is empty"):
        generate(model, "", max_new_tokens=5)


def test_prompt_with_a_character_the_tokenizer_lacks_is_refused(model):
    with pytest.raises(TokenizerError, match="'Z'"):
        generate(model, "the Zebra", max_new_tokens=5)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 5, "temperature": -1.0}, "temperature"),
    ({"max_new_tokens": 5, "top_p": 2.0}, "top_p"),
    ({"max_new_tokens": 5, "stop": [""]}, "stop"),
    ({"max_new_tokens": 5, "top_k": 2.5}, "top_k must be an integer"),
    ({"max_new_tokens": 5, "top_k": True}, "top_k must be an integer"),
    ({"max_new_tokens": 5, "temperature": "hot"}, "temperature must be a finite number"),
    ({"max_new_tokens": 5, "seed": -1}, "seed must be a non-negative integer"),
])
def test_nonsense_arguments_are_refused(model, kwargs, message):
    with pytest.raises(SmallMindError, match=message):
        generate(model, "the", **kwargs)


@pytest.mark.parametrize("prompt", [None, 42, b"the"])
def test_a_prompt_that_is_not_text_is_refused(model, prompt):
    with pytest.raises(SmallMindError, match="the prompt must be text"):
        generate(model, prompt, max_new_tokens=5)


def test_a_temperature_near_zero_generates_the_greedy_text(model):
    greedy = "".join(generate(model, "the", max_new_tokens=12, temperature=0.0))
    assert "".join(generate(model, "the", max_new_tokens=12, temperature=1e-300, seed=3)) == greedy


# ---------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def checkpoint_dir(model, tmp_path_factory):
    cfg, params, tokenizer = model
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(path, config=cfg, params=params, tokenizer=tokenizer)
    return path


def test_cli_streams_the_same_text_as_the_api(model, checkpoint_dir, capsys):
    code = main(["generate", "--model", str(checkpoint_dir), "the ", "--max-new-tokens", "15",
                 "--temperature", "0", "--threads", "1"])
    assert code == 0
    expected = "".join(generate(model, "the ", max_new_tokens=15, temperature=0.0))
    assert capsys.readouterr().out == expected + "\n"


def test_cli_default_length_fills_the_context_at_most(model, checkpoint_dir, capsys):
    ctx = model[0].context_length  # 64: the default of 100 new tokens would not fit
    assert main(["generate", "--model", str(checkpoint_dir), "the ", "--temperature", "0"]) == 0
    expected = "".join(generate(model, "the ", max_new_tokens=ctx - 4, temperature=0.0))
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", "--model", str(checkpoint_dir), "a" * ctx]) == 2
    assert "context length" in capsys.readouterr().err


def test_cli_sampling_flags_and_stop_reach_the_generator(model, checkpoint_dir, capsys):
    args = ["--max-new-tokens", "30", "--top-k", "10", "--top-p", "0.9", "--seed", "3",
            "--temperature", "0.8"]
    full = "".join(generate(model, "dog", max_new_tokens=30, top_k=10, top_p=0.9, seed=3, temperature=0.8))
    stop = full[8:10]
    assert main(["generate", "--model", str(checkpoint_dir), "dog", *args, "--stop", stop, "zzz"]) == 0
    assert capsys.readouterr().out == full[:full.index(stop)] + "\n"


@pytest.mark.parametrize("argv, message", [
    (["--model", "{missing}", "the"], "checkpoint"),
    (["--model", "{ckpt}", "the Zebra"], "'Z'"),
    (["--model", "{ckpt}", "the", "--max-new-tokens", "1000"], "context length"),
    (["--model", "{ckpt}", "the", "--top-p", "2"], "--top-p"),
    (["--model", "{ckpt}", "the", "--top-k", "0"], "--top-k"),
    (["--model", "{ckpt}", "the", "--temperature", "-1"], "--temperature"),
    (["--model", "{ckpt}", "the", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (["--model", "{ckpt}", "", "--max-new-tokens", "3"], "prompt is empty"),
])
def test_cli_bad_input_is_one_line_on_stderr_and_exit_2(checkpoint_dir, tmp_path, capsys, argv, message):
    argv = [a.format(ckpt=checkpoint_dir, missing=tmp_path / "nothing") for a in argv]
    assert run_cli(["generate", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def run_cli(argv):
    # flag errors exit from inside argparse (SystemExit); errors found later are main's return code
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_cli_corrupt_checkpoint_is_one_line_and_exit_2_in_a_real_process(checkpoint_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint_dir.rglob("*"):
        if f.is_file():
            target = broken / f.relative_to(checkpoint_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            data = f.read_bytes()
            target.write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    run = subprocess.run([sys.executable, "-m", "smallmind", "generate", "--model", str(broken), "the"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_detokenizer_pieces_match_decoding_everything_at_once_for_any_bytes():
    # random tokens of 1-3 bytes (ASCII, lead, continuation and invalid bytes alike): the pieces
    # join to what decoding the whole stream gives once the tail is flushed, whichever path
    # (nothing held and ending in ASCII, or bytes held back) each token took
    class Bytes:
        def __init__(self, table):
            self.table = table

        def token_bytes(self, token):
            return self.table[token]

    rng = np.random.default_rng(7)
    alphabet = [0x41, 0x62, 0x20, 0xC3, 0xA9, 0xE6, 0x97, 0xA5, 0xF0, 0x9F, 0x99, 0x82, 0xFF, 0x80]
    table = [bytes(rng.choice(alphabet, size=rng.integers(1, 4)).tolist()) for _ in range(64)]
    for _ in range(200):
        ids = rng.integers(0, len(table), size=rng.integers(1, 12)).tolist()
        detokenizer = Detokenizer(Bytes(table))
        pieces = [detokenizer.push(i) for i in ids]
        data = b"".join(table[i] for i in ids)
        assert "".join(pieces) + detokenizer.flush() == data.decode("utf-8", errors="replace")


def test_stop_guard_without_stop_strings_passes_every_piece_through():
    guard = StopGuard(())
    assert [guard.push(p) for p in ("a", "", "b c", "END")] == ["a", "", "b c", "END"]
    assert guard.flush() == "" and not guard.stopped
