"""formats.token_lookup: vocabulary string -> id through a NumPy hash table."""

import numpy as np
import pytest

from smallmind.errors import TokenizerError
from smallmind.formats import token_lookup
from smallmind.formats.string_array import StringArray
from smallmind.formats.token_lookup import TokenLookup


def random_vocab(rng, n=300, alphabet="ab▁é😀"):
    return ["".join(rng.choice(list(alphabet), size=rng.integers(1, 7))) for _ in range(n)]


def test_every_string_maps_to_its_last_id():
    tokens = random_vocab(np.random.default_rng(0))
    lookup = TokenLookup(StringArray.from_strings(tokens))
    expected = {t: i for i, t in enumerate(tokens)}     # a repeated string keeps its last id
    assert len(expected) < len(tokens)
    assert all(lookup.get(t) == i for t, i in expected.items())
    assert lookup.max_chars == max(len(t) for t in tokens)


def test_strings_outside_the_vocabulary_are_not_found():
    lookup = TokenLookup(StringArray.from_strings(["ab", "abc", "▁x"]))
    assert [lookup.get(t) for t in ("a", "abcd", "▁", "x", "", "ba")] == [None] * 6
    assert "abc" in lookup and "abd" not in lookup


def test_find_gives_the_id_of_every_span_of_a_text():
    rng = np.random.default_rng(1)
    tokens = random_vocab(rng)
    lookup = TokenLookup(StringArray.from_strings(tokens))
    expected = {t: i for i, t in enumerate(tokens)}
    text = "".join(rng.choice(list("ab▁é😀z"), size=200))
    data = np.frombuffer(text.encode(), np.uint8)
    bounds = np.append(np.flatnonzero((data & 0xC0) != 0x80), len(data))
    spans = [(a, b) for a in range(len(text)) for b in range(a + 1, min(len(text), a + 8) + 1)]
    starts, ends = (np.array(side, np.int64) for side in zip(*spans))
    found = lookup.find(lookup.text_hashes(data), bounds[starts], bounds[ends])
    assert found.tolist() == [expected.get(text[a:b], -1) for a, b in spans]
    assert (found >= 0).sum() > 50


def test_a_hash_hit_with_other_bytes_is_not_a_match(monkeypatch):
    # base 1 makes a string's hash the sum of its bytes: "ba" collides with "ab"
    monkeypatch.setattr(token_lookup, "_BASES", (1,))
    lookup = TokenLookup(StringArray.from_strings(["ab", "x"]))
    assert (lookup.get("ab"), lookup.get("ba")) == (0, None)


def test_a_base_under_which_two_strings_collide_is_not_used(monkeypatch):
    monkeypatch.setattr(token_lookup, "_BASES", (1, 3))
    lookup = TokenLookup(StringArray.from_strings(["ab", "ba"]))
    assert (lookup.base, lookup.get("ab"), lookup.get("ba")) == (3, 0, 1)
    monkeypatch.setattr(token_lookup, "_BASES", (1,))
    with pytest.raises(TokenizerError, match="could not be given distinct hashes"):
        TokenLookup(StringArray.from_strings(["ab", "ba"]))
