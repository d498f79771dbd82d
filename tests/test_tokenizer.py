import json

import numpy as np
import pytest

from smallmind.errors import TokenizerError
from smallmind.formats.tokenizer import (
    ENCODE_CHUNK_CHARS,
    CharTokenizer,
    _split_for_encoding,
    load_tokenizer,
    train_tokenizer,
)

UNICODE_TEXT = "def größe(x):\n    return 'naïve café — 日本語 ✓ 🙂'\n" * 20


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", UNICODE_TEXT * 5 + "the quick brown fox jumps over the lazy dog\n" * 50, 300)


def test_char_vocab_is_the_sorted_distinct_characters():
    tok = train_tokenizer("char", "banana!", 100)
    assert tok.kind == "char"
    assert tok.chars == ["!", "a", "b", "n"]
    assert tok.vocab_size == 4
    assert tok.encode("ban!").tolist() == [2, 1, 3, 0]


def test_char_round_trips_unicode():
    tok = train_tokenizer("char", UNICODE_TEXT, 512)
    ids = tok.encode(UNICODE_TEXT)
    assert ids.dtype == np.int32 and ids.shape == (len(UNICODE_TEXT),)
    assert tok.decode(ids) == UNICODE_TEXT


def test_char_encode_names_the_first_character_it_cannot_encode():
    tok = train_tokenizer("char", "abc", 10)
    with pytest.raises(TokenizerError, match=r"'é' \(U\+00E9\) at position 2"):
        tok.encode("abé z")


def test_char_refuses_more_characters_than_the_vocabulary_size():
    with pytest.raises(TokenizerError, match="5 distinct characters, more than the vocabulary size 4"):
        train_tokenizer("char", "abcde", 4)


def test_bpe_round_trips_unicode_including_unseen_characters(bpe):
    text = UNICODE_TEXT + "Ωmega ≠ 𝔘nseen 🚀\n"
    ids = bpe.encode(text)
    assert ids.dtype == np.int32
    assert bpe.decode(ids) == text


def test_bpe_learns_merges_up_to_the_requested_vocabulary(bpe):
    assert bpe.kind == "bpe"
    assert 256 < bpe.vocab_size <= 300
    # merges compress: fewer ids than bytes
    assert bpe.encode(UNICODE_TEXT).size < len(UNICODE_TEXT.encode("utf-8")) / 2


def test_bpe_training_is_deterministic(bpe):
    again = train_tokenizer("bpe", UNICODE_TEXT * 5 + "the quick brown fox jumps over the lazy dog\n" * 50, 300)
    assert again.to_json() == bpe.to_json()


def test_bpe_chunked_encoding_equals_whole_text_encoding(bpe):
    line_kinds = ["    indented line {}\n", "\n", "top level {}\n", "\t\ttabbed {}  \n", "  \n"]
    text = "".join(line_kinds[i % 5].format(i) for i in range(3 * ENCODE_CHUNK_CHARS // 12))
    assert len(_split_for_encoding(text)) > 2
    whole = bpe._hf.encode(text, add_special_tokens=False).ids
    assert bpe.encode(text).tolist() == whole


def test_decoding_every_prefix_never_raises_and_ends_at_the_text(bpe):
    text = "größe 日本語 🙂 ok"
    ids = bpe.encode(text)
    pieces = [bpe.decode(ids[:n]) for n in range(len(ids) + 1)]
    assert pieces[0] == "" and pieces[-1] == text
    assert any("\ufffd" in p for p in pieces)  # some prefix ends inside a multi-byte character


def test_decode_refuses_ids_outside_the_vocabulary(bpe):
    char = train_tokenizer("char", "ab", 10)
    with pytest.raises(TokenizerError, match="token id 2 is outside the vocabulary"):
        char.decode([0, 2])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        bpe.decode([-1])


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_and_load_round_trip(tmp_path, kind):
    tok = train_tokenizer(kind, UNICODE_TEXT, 400)
    tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.kind == kind and loaded.vocab_size == tok.vocab_size
    assert np.array_equal(loaded.encode(UNICODE_TEXT), tok.encode(UNICODE_TEXT))
    assert json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["kind"] == kind


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"hello": 1}', "not a SmallMind tokenizer"),
    ('{"format": "smallmind-tokenizer", "version": 1, "kind": "wordpiece"}', "unknown tokenizer kind"),
    ('{"format": "smallmind-tokenizer", "version": 9, "kind": "char"}', "version 9"),
    ('{"format": "smallmind-tokenizer", "version": 1, "kind": "bpe", "tokenizer": {"x": 1}}', "bad BPE tokenizer"),
])
def test_load_refuses_missing_or_malformed_files(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(path)


def test_unknown_kind_and_too_small_bpe_vocabulary_are_refused():
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'word'"):
        train_tokenizer("word", "abc", 10)
    with pytest.raises(TokenizerError, match="needs more than 256 ids"):
        train_tokenizer("bpe", "abc", 200)


def test_char_tokenizer_refuses_a_vocabulary_of_one_character():
    with pytest.raises(TokenizerError, match="at least 2"):
        CharTokenizer(["a"])


def test_a_lone_surrogate_is_refused_by_both_kinds(bpe):
    char = train_tokenizer("char", "abc", 10)
    with pytest.raises(TokenizerError, match=r"'\\udcff' \(U\+DCFF\) at position 2"):
        char.encode("ab\udcffc")
    with pytest.raises(TokenizerError, match="at position 2: it is not valid Unicode"):
        bpe.encode("ab\udcffc")
