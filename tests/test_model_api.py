import json

import numpy as np
import pytest

import smallmind
from smallmind.cli import main
from smallmind.errors import SmallMindError
from smallmind.formats.checkpoint import save_checkpoint
from smallmind.formats.tokenizer import train_tokenizer
from smallmind.models.gpt import init_params, preset
from smallmind.runtime.generate import Detokenizer, utf8_complete
from smallmind.runtime.model import ChatSession, Model, as_model

TEXT = "naïve café: 日本語のテキスト, emoji 🙂🚀 and plain words.\n" * 20


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    tokenizer = train_tokenizer("bpe", TEXT, 300)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("api") / "model"
    save_checkpoint(path, config=cfg, params=init_params(cfg, seed=11), tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def model(checkpoint_dir):
    return smallmind.load(checkpoint_dir)


def test_load_opens_a_checkpoint_directory_as_a_model(model):
    assert isinstance(model, Model) and model.kind == "checkpoint"
    assert model.vocab_size == 300 and model.context_length == 64


def test_tokenize_and_detokenize_round_trip(model):
    ids = model.tokenize("café 🙂 words")
    assert all(isinstance(i, int) for i in ids)
    assert model.detokenize(ids) == "café 🙂 words"


def test_logits_are_every_positions_and_match_the_generation_path(model):
    ids = model.tokenize("plain words and café")
    logits = model.logits(ids)
    assert logits.shape == (len(ids), 300) and logits.dtype == np.float32
    session = model.session(ctx=32)
    np.testing.assert_allclose(session.prefill(ids[:5]), logits[4], rtol=1e-4, atol=1e-4)
    for i, token in enumerate(ids[5:], start=5):
        np.testing.assert_allclose(session.step(token), logits[i], rtol=1e-4, atol=1e-4)


def test_generate_streams_text_and_the_api_function_agrees(model, checkpoint_dir):
    pieces = list(model.generate("emoji ", max_new_tokens=12, temperature=0))
    ckpt = smallmind.load_checkpoint(checkpoint_dir)
    assert "".join(pieces) == "".join(smallmind.generate(ckpt, "emoji ", max_new_tokens=12, temperature=0))


@pytest.mark.parametrize("bad, message", [
    (lambda m: m.logits([]), "at least one"),
    (lambda m: m.logits([0, 300]), "outside the vocabulary"),
    (lambda m: m.logits(list(range(65))), "context"),
    (lambda m: m.detokenize([[1]]), "1-D"),
    (lambda m: m.tokenize(None), "must be a str"),
    (lambda m: m.generate(None, max_new_tokens=3), "must be text"),
    (lambda m: m.chat([{"role": "user", "content": "hi"}]), "no chat template"),
])
def test_bad_calls_raise_smallmind_errors(model, bad, message):
    with pytest.raises(SmallMindError, match=message):
        bad(model)


@pytest.mark.parametrize("path, message", [("missing.gguf", "no model at"), ("notgguf.bin", "not a GGUF file")])
def test_load_refuses_what_is_not_a_model(tmp_path, path, message):
    (tmp_path / "notgguf.bin").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(SmallMindError, match=message):
        smallmind.load(tmp_path / path)


def test_as_model_refuses_other_objects():
    with pytest.raises(SmallMindError, match="expected a model"):
        as_model(42)


class TurnTemplate:
    """A chat template in the spirit of ChatML, over plain text (the tiny BPE has no special tokens)."""

    def render(self, messages, add_generation_prompt=True):
        text = "".join(f"[{m['role']}] {m['content']}\n" for m in messages)
        return text + ("[assistant] " if add_generation_prompt else "")


def test_a_chat_session_prefills_only_the_new_turn(model):
    chatty = Model(model.net, model.tokenizer, name="t", path="", kind="checkpoint", architecture="gpt",
                   chat_template=TurnTemplate())
    chat = ChatSession(chatty, ctx=64)
    first_prompt = chatty.chat_prompt_ids([{"role": "user", "content": "café"}])
    first = "".join(chat.turn("café", max_new_tokens=4, temperature=0))
    assert chat.prefilled == len(first_prompt)
    second = "".join(chat.turn("words", max_new_tokens=4, temperature=0))
    assert chat.messages == [{"role": "user", "content": "café"}, {"role": "assistant", "content": first},
                             {"role": "user", "content": "words"}, {"role": "assistant", "content": second}]
    second_prompt = chatty.chat_prompt_ids(chat.messages[:3])
    # the first turn's prompt was reused from the cache, not prefilled again
    assert 0 < chat.prefilled <= len(second_prompt) - len(first_prompt)
    # and the reply is the one a fresh session gives for the whole conversation
    assert second == "".join(chatty.chat(chat.messages[:3], max_new_tokens=4, temperature=0))
    chat.reset()
    assert chat.messages == [] and chat.session.length == 0


def test_utf8_complete_cuts_before_an_unfinished_character():
    text = "a🙂é".encode()
    assert utf8_complete(text) == len(text)
    assert utf8_complete(text[:3]) == 1            # inside the 4-byte emoji
    assert utf8_complete(text[:-1]) == 5           # inside the 2-byte é
    assert utf8_complete(b"") == 0


def test_detokenizer_streams_exactly_the_tokens_bytes(model):
    ids = model.tokenize("日本語 🙂🚀 naïve")
    detok = Detokenizer(model.tokenizer)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) + detok.flush() == "日本語 🙂🚀 naïve"
    assert all("\ufffd" not in p for p in pieces)


def test_inspect_describes_a_checkpoint_as_json(checkpoint_dir, capsys):
    assert main(["inspect", str(checkpoint_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "smallmind-gpt" and info["parameters"] == init_params(preset("tiny", vocab_size=300)).count
    assert info["memory"]["kv_cache_bytes"] == 2 * 2 * 4 * 64 * 32 * 4
    assert info["tensor_types"][0]["type"] == "F32"


def test_inspect_of_a_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.gguf")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_gguf_models_weights_are_read_into_memory_unless_mapping_is_asked_for():
    from model_files import smollm2_path

    path = smollm2_path()
    read, mapped = smallmind.load(path, mmap=False), smallmind.load(path, mmap=True)
    assert read.source.in_memory and not mapped.source.in_memory
    emb = read.net.token_embd
    assert not emb.data.flags.writeable
    ids = read.tokenize("The weights are read once", add_bos=True)
    np.testing.assert_array_equal(read.logits(ids), mapped.logits(ids))
    with pytest.raises(SmallMindError, match="mmap must be True, False or None"):
        smallmind.load(path, mmap="no")


def test_weights_go_into_memory_when_they_take_at_most_half_of_what_is_available(monkeypatch):
    from smallmind import memory
    from smallmind.runtime import model as model_module

    monkeypatch.setattr(model_module, "huge_pages_for_large_arrays", lambda: True)
    monkeypatch.setattr(model_module, "available_bytes", lambda: 1000)
    assert model_module.weights_in_memory(500) and not model_module.weights_in_memory(501)
    assert model_module.weights_in_memory(10**9, mmap=False) and not model_module.weights_in_memory(1, mmap=True)
    monkeypatch.setattr(model_module, "available_bytes", lambda: None)
    assert model_module.weights_in_memory(10**12)
    # without huge pages for large arrays a copy gains nothing: the file stays mapped unless asked
    monkeypatch.setattr(model_module, "huge_pages_for_large_arrays", lambda: False)
    assert not model_module.weights_in_memory(500) and model_module.weights_in_memory(500, mmap=False)
    # asked for in memory and not fitting: one clear error, nothing half-loaded
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)
    from model_files import smollm2_path

    with pytest.raises(SmallMindError, match="load it mapped instead"):
        smallmind.load(smollm2_path(), mmap=False)
