"""formats.spm_merge: llama.cpp's SPM merge, with its batched lookups and its cuts, gives the ids of
the plain rule (merge the best-scoring adjacent pair that forms a token, leftmost on ties)."""

import numpy as np
import pytest

from smallmind.formats import spm_merge
from smallmind.formats.spm_merge import PIECE_CHARS, SPMMerger
from smallmind.formats.string_array import StringArray
from smallmind.formats.token_lookup import TokenLookup

ALPHABET = "ab▁é😀"


def plain_spm(text, token_to_id, scores, byte_ids):
    """The rule itself: symbols in a list, the best pair found by scanning them all each time."""
    symbols = list(text)
    while True:
        best = None
        for i in range(len(symbols) - 1):
            token_id = token_to_id.get(symbols[i] + symbols[i + 1])
            if token_id is not None and (best is None or scores[token_id] > best[0]):
                best = (scores[token_id], i)
        if best is None:
            break
        i = best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    ids = []
    for s in symbols:
        ids.extend([token_to_id[s]] if s in token_to_id else [byte_ids[b] for b in s.encode()])
    return ids


@pytest.fixture(scope="module")
def vocab():
    rng = np.random.default_rng(0)
    pieces = {"".join(rng.choice(list(ALPHABET), size=rng.integers(1, 9))) for _ in range(400)}
    tokens = sorted(pieces) + [f"<0x{b:02X}>" for b in range(256)]
    # few distinct scores, so that ties between pairs are common
    scores = rng.integers(-5, 0, size=len(tokens)).astype(np.float32)
    token_to_id = {t: i for i, t in enumerate(tokens)}
    byte_ids = [token_to_id[f"<0x{b:02X}>"] for b in range(256)]
    merger = SPMMerger(TokenLookup(StringArray.from_strings(tokens)), scores, byte_ids)
    return merger, token_to_id, scores.tolist(), byte_ids


@pytest.fixture(params=["all spans", "formable spans"])
def span_search(request, monkeypatch):
    """Both ways of finding the spans to merge: all at once (short texts), length by length."""
    monkeypatch.setattr(spm_merge, "ALL_SPANS_LIMIT", 1 << 30 if request.param == "all spans" else 0)


def random_text(rng, n):
    # "z" is in no token: it is spelled with its byte token
    return "".join(rng.choice(list(ALPHABET + "z"), size=n))


def test_short_texts_match_the_plain_rule(vocab, span_search):
    merger, token_to_id, scores, byte_ids = vocab
    rng = np.random.default_rng(1)
    texts = [random_text(rng, int(rng.integers(0, 40))) for _ in range(200)]
    assert [merger.encode([t])[0] for t in texts] == [plain_spm(t, token_to_id, scores, byte_ids) for t in texts]


def test_texts_longer_than_a_piece_match_the_plain_rule(vocab, span_search):
    merger, token_to_id, scores, byte_ids = vocab
    rng = np.random.default_rng(2)
    text = random_text(rng, 3 * PIECE_CHARS + 17)
    assert merger.encode([text]) == [plain_spm(text, token_to_id, scores, byte_ids)]


def test_texts_in_one_call_are_merged_apart(vocab, span_search):
    merger, token_to_id, scores, byte_ids = vocab
    rng = np.random.default_rng(3)
    texts = [random_text(rng, int(n)) for n in rng.integers(0, 30, size=50)] + ["", "ab", "ab"]
    assert merger.encode(texts) == [plain_spm(t, token_to_id, scores, byte_ids) for t in texts]
