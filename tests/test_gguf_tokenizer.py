"""GGUF tokenizers against llama.cpp: committed reference ids/text for both real files, streaming
pieces, end-of-generation ids, llama.cpp's merge and special-token rules, and bad metadata."""

import codecs
import functools
import json
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from gguf_meta import write_metadata_only_copy
from model_files import gemma3_path, smollm2_path

from smallmind.errors import TokenizerError
from smallmind.formats.gguf import GGUFFile
from smallmind.formats.gguf_tokenizer import gpt2_byte_alphabet, tokenizer_from_gguf

REFERENCE = Path(__file__).resolve().parent / "reference"
MODELS = {"gemma3": gemma3_path, "smollm2": smollm2_path}


@functools.cache
def meta_of(name: str) -> dict:
    return GGUFFile(MODELS[name]()).metadata


@functools.cache
def tokenizer_of(name: str):
    return tokenizer_from_gguf(meta_of(name))


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_name(request):
    return request.param


@pytest.fixture(scope="module")
def tok(model_name):
    return tokenizer_of(model_name)


@pytest.fixture(scope="module")
def ref(model_name):
    """llama.cpp's answers for this file, written by reference/make_tokenizer_refs.py."""
    return json.loads((REFERENCE / f"tokenizer_{model_name}.json").read_text(encoding="utf-8"))


def mismatches(cases, ours, theirs):
    return [(c["text"], ours(c), theirs(c)) for c in cases if ours(c) != theirs(c)]


def test_ids_without_special_parsing_match_llama_cpp(tok, ref):
    assert mismatches(ref["cases"], lambda c: tok.encode(c["text"]), lambda c: c["ids"]["plain"]) == []


def test_ids_with_special_parsing_match_llama_cpp(tok, ref):
    assert mismatches(ref["cases"], lambda c: tok.encode(c["text"], special=True),
                      lambda c: c["ids"]["special"]) == []


def test_ids_with_the_files_add_bos_match_llama_cpp_add_special(tok, ref):
    for kind, special in (("add_special_plain", False), ("add_special_special", True)):
        assert mismatches(ref["cases"], lambda c: tok.encode(c["text"], add_bos=tok.add_bos, special=special),
                          lambda c: c["ids"][kind]) == []


def test_decoded_text_matches_llama_cpp(tok, ref):
    assert mismatches(ref["cases"], lambda c: tok.decode(c["ids"]["plain"]),
                      lambda c: c["decoded"]["plain"]) == []
    assert mismatches(ref["cases"], lambda c: tok.decode(c["ids"]["special"], special=True),
                      lambda c: c["decoded"]["special"]) == []
    assert mismatches(ref["cases"], lambda c: tok.decode(c["ids"]["special"]),
                      lambda c: c["decoded"]["special_hidden"]) == []


def test_token_bytes_match_llama_cpp_pieces(tok, ref):
    assert mismatches(ref["cases"], lambda c: [tok.token_bytes(i).hex() for i in c["ids"]["special"]],
                      lambda c: c["pieces_hex"]) == []


def test_special_ids_and_add_bos_match_llama_cpp(tok, ref):
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (
        ref["vocab_size"], ref["bos_id"], ref["eos_id"], ref["add_bos"])


def test_eog_ids_match_llama_cpp(tok, ref):
    assert tok.eog_ids == frozenset(ref["eog_ids"])


def test_decode_of_encode_round_trips_where_llama_cpp_does(tok, ref):
    round_trips = [c["text"] for c in ref["cases"] if c["decoded"]["plain"] == c["text"]]
    assert len(round_trips) > len(ref["cases"]) // 2
    assert [s for s in round_trips if tok.decode(tok.encode(s)) != s] == []


@pytest.mark.parametrize("text", ["日本語のテキスト 👨‍👩‍👧‍👦 café 🇫🇷", "漢字 🏳️‍🌈\n\n𓀀 ꙮ x"])
def test_streamed_token_bytes_rebuild_the_text(tok, text):
    # a streaming face joins pieces and emits only complete UTF-8 characters
    decoder = codecs.getincrementaldecoder("utf-8")()
    streamed = "".join(decoder.decode(tok.token_bytes(i)) for i in tok.encode(text))
    streamed += decoder.decode(b"", final=True)
    assert streamed == text


def test_eog_ids_of_gemma3_are_eos_end_of_turn_and_end_tag():
    tok = tokenizer_of("gemma3")
    assert sorted(tok.token_text(i) for i in tok.eog_ids) == ["</s>", "<end_of_turn>", "<eos>"]


def test_eog_ids_of_smollm2_are_endoftext_im_end_and_reponame():
    tok = tokenizer_of("smollm2")
    # <reponame> is llama.cpp's FIM repo token, which it counts as end of generation
    assert sorted(tok.token_text(i) for i in tok.eog_ids) == ["<reponame>", "<|endoftext|>", "<|im_end|>"]


def test_control_tokens_are_text_unless_special():
    tok = tokenizer_of("gemma3")
    start = tok.vocab.lookup.get("<start_of_turn>")
    assert tok.encode("<start_of_turn>", special=True) == [start]
    assert start not in tok.encode("<start_of_turn>")


def test_user_defined_tokens_are_matched_even_without_special():
    tok = tokenizer_of("gemma3")
    # Gemma's newline runs are USER_DEFINED: cut out before the SPM merge, special or not
    assert tok.encode("a\n\nb") == [tok.encode("a")[0], tok.vocab.lookup.get("\n\n"), tok.encode("b")[0]]


def test_control_tokens_render_only_with_special():
    tok = tokenizer_of("smollm2")
    im_end = tok.vocab.lookup.get("<|im_end|>")
    assert (tok.token_bytes(im_end), tok.token_bytes(im_end, special=True)) == (b"", b"<|im_end|>")


def spm_meta(tokens, scores, types=None, **extra):
    """A small SentencePiece-style vocabulary: 3 specials, the given pieces, 256 byte tokens."""
    all_tokens = ["<unk>", "<s>", "</s>", *tokens, *[f"<0x{b:02X}>" for b in range(256)]]
    all_types = [2, 3, 3, *(types or [1] * len(tokens)), *[6] * 256]
    all_scores = [0.0, 0.0, 0.0, *scores, *[0.0] * 256]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": all_tokens,
            "tokenizer.ggml.scores": np.array(all_scores, dtype=np.float32),
            "tokenizer.ggml.token_type": np.array(all_types, dtype=np.int32),
            "tokenizer.ggml.add_space_prefix": False, **extra}


def test_spm_merges_the_highest_scoring_pair_first():
    tok = tokenizer_from_gguf(spm_meta(["a", "b", "ab", "ba"], [-1.0, -1.0, -5.0, -2.0]))
    assert [tok.token_text(i) for i in tok.encode("aba")] == ["a", "ba"]


def test_spm_breaks_score_ties_leftmost_first():
    tok = tokenizer_from_gguf(spm_meta(["a", "b", "ab", "ba"], [-1.0, -1.0, -2.0, -2.0]))
    assert [tok.token_text(i) for i in tok.encode("aba")] == ["ab", "a"]


def test_spm_spells_unknown_characters_with_byte_tokens():
    tok = tokenizer_from_gguf(spm_meta(["a"], [-1.0]))
    assert [tok.token_text(i) for i in tok.encode("aé")] == ["a", "<0xC3>", "<0xA9>"]
    assert tok.decode(tok.encode("aé")) == "aé"


def test_spm_space_prefix_is_added_and_dropped_on_decode():
    tok = tokenizer_from_gguf(spm_meta(["\u2581a", "a"], [-1.0, -2.0], **{"tokenizer.ggml.add_space_prefix": True}))
    ids = tok.encode("a")
    assert [tok.token_text(i) for i in ids] == ["\u2581a"]
    assert tok.decode(ids) == "a"


def test_spm_defaults_follow_llama_cpp():
    tok = tokenizer_from_gguf(spm_meta(["a"], [-1.0]))
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)


def test_encode_with_bos_prepends_it():
    tok = tokenizer_of("smollm2")
    assert tok.encode("hi", add_bos=True) == [tok.bos_id, *tok.encode("hi")]


def test_decode_refuses_ids_outside_the_vocabulary():
    tok = tokenizer_of("smollm2")
    with pytest.raises(TokenizerError, match="49152"):
        tok.decode([1, 49152])


def test_encode_refuses_lone_surrogates():
    with pytest.raises(TokenizerError, match="surrogate"):
        tokenizer_of("smollm2").encode("a\udc80")


def with_changes(meta, **changes):
    changed = dict(meta)
    for key, value in changes.items():
        full_key = "tokenizer.ggml." + key
        if value is None:
            changed.pop(full_key, None)
        else:
            changed[full_key] = value
    return changed


@pytest.mark.parametrize("changes, key", [
    ({"tokens": None}, "tokenizer.ggml.tokens"),
    ({"tokens": []}, "tokenizer.ggml.tokens"),
    ({"model": None}, "tokenizer.ggml.model"),
    ({"model": "t5"}, "tokenizer.ggml.model"),
    ({"scores": np.zeros(3, dtype=np.float32)}, "tokenizer.ggml.scores"),
    ({"token_type": np.ones(5, dtype=np.int32)}, "tokenizer.ggml.token_type"),
    ({"bos_token_id": 10**6}, "tokenizer.ggml.bos_token_id"),
    ({"eos_token_id": -1}, "tokenizer.ggml.eos_token_id"),
    ({"add_bos_token": "yes"}, "tokenizer.ggml.add_bos_token"),
])
def test_bad_spm_metadata_names_the_key(changes, key):
    with pytest.raises(TokenizerError, match=key.replace(".", r"\.")):
        tokenizer_from_gguf(with_changes(spm_meta(["a"], [-1.0]), **changes))


def test_byte_typed_token_that_is_not_hex_is_refused():
    meta = spm_meta(["a", "zz"], [-1.0, -1.0], types=[1, 6])
    with pytest.raises(TokenizerError, match="BYTE"):
        tokenizer_from_gguf(meta)


def bpe_meta(**changes):
    """A tiny byte-level BPE vocabulary: the 256 GPT-2 byte symbols, 'Ġ', 'ĠĠ' merges."""
    symbols = sorted(gpt2_byte_alphabet(), key=gpt2_byte_alphabet().get)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.tokens": ["<|endoftext|>", *symbols, "ab", "Ġab"],
            "tokenizer.ggml.merges": ["a b", "Ġ ab"], "tokenizer.ggml.eos_token_id": 0,
            "tokenizer.ggml.bos_token_id": 0}
    return with_changes(meta, **changes)


def test_bpe_merges_by_rank():
    tok = tokenizer_from_gguf(bpe_meta())
    assert [tok.token_text(i) for i in tok.encode("ab ab abc")] == ["ab", "Ġab", "Ġab", "c"]


def test_end_of_generation_text_becomes_a_hidden_control_token():
    # typed NORMAL in the file, but llama.cpp treats <|endoftext|> as CONTROL and EOG by its text
    tok = tokenizer_from_gguf(bpe_meta(eos_token_id=1))
    assert tok.eog_ids == {0, 1}
    assert (tok.token_bytes(0), tok.encode("<|endoftext|>", special=True)) == (b"", [0])
    assert 0 not in tok.encode("<|endoftext|>")


def test_eot_token_id_key_adds_to_end_of_generation():
    tok = tokenizer_from_gguf(bpe_meta(eot_token_id=257))
    assert tok.eog_ids == {0, 257}


@pytest.mark.parametrize("changes, match", [
    ({"merges": None}, r"tokenizer\.ggml\.merges"),
    ({"merges": ["ab"]}, r"tokenizer\.ggml\.merges\[0\]"),
    ({"merges": ["a b", "x yz"]}, r"tokenizer\.ggml\.merges\[1\]"),
    ({"merges": [1, 2]}, r"tokenizer\.ggml\.merges"),
    ({"pre": "no-such-pre"}, r"tokenizer\.ggml\.pre.*no-such-pre"),
])
def test_bad_bpe_metadata_names_the_key(changes, match):
    with pytest.raises(TokenizerError, match=match):
        tokenizer_from_gguf(bpe_meta(**changes))


@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "qwen2", "smollm"])
def test_each_known_pre_tokenizer_round_trips_text(pre):
    tok = tokenizer_from_gguf(bpe_meta(pre=pre))
    text = "ab  ab\n\n123 4567 sab's\tÿ日本"
    assert tok.decode(tok.encode(text)) == text


# Live comparison with llama.cpp (llama-cpp-python) over many more strings: pytest -m slow

LIVE_ALPHABET = [
    "a", "Z", "word", " the", " ", "  ", "    ", "\n", "\n\n", "\n\n\n", "\t", "\r\n", "\u00a0", "\u3000",
    "0", "42", "1234567", ".", ",", "'s", "'re", " 't", "!", "?", "'", '"', "(", ")", "{", "}", "_", "-",
    "—", "…", "“", "”", "é", "ñ", "ß", "Å", "e\u0301", "日", "本語", "한", "中文", "👍", "🏽", "\u200d",
    "👨‍👩‍👧", "🇯🇵", "ꙮ", "𓀀", "\ue000", "\x00", "\x1f", "<start_of_turn>", "<end_of_turn>",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<eos>", "<bos>", "<unused3>", "<0x41>",
    "[multimodal]", "<reponame>", "<", ">", "|", "<start_of", "def ", "return", "    if x:",
]


def live_texts(ref_cases) -> list:
    rng = random.Random(20261121)
    texts = [c["text"] for c in ref_cases]
    texts += ["".join(rng.choice(LIVE_ALPHABET) for _ in range(rng.randint(1, 40))) for _ in range(400)]
    # random code points of the first three planes assigned by Unicode 14 (Python's tables): the
    # regex library's classes (Unicode 15.0) and llama.cpp's (16) differ only on later additions
    assigned = [c for c in map(chr, range(0x20, 0x30000)) if unicodedata.category(c) not in ("Cn", "Cs")]
    texts += ["".join(rng.choice(assigned) for _ in range(rng.randint(1, 12))) for _ in range(200)]
    sources = sorted((Path(__file__).resolve().parents[1] / "src" / "smallmind").rglob("*.py"))
    texts += [p.read_text(encoding="utf-8")[:3000] for p in sources[:40]]
    return [t for t in texts if t]


def live_mismatches(tok, llama, texts, add_bos=False):
    bad = []
    for text in texts:
        for special in (False, True):
            ours = tok.encode(text, add_bos=add_bos, special=special)
            theirs = llama.tokenize(text, add_special=add_bos, special=special)
            if ours != theirs:
                bad.append(("ids", special, text, ours, theirs))
            elif tok.decode(ours, special=special) != llama.detokenize(theirs, special=special):
                bad.append(("text", special, text, tok.decode(ours, special=special)))
    return bad


@pytest.mark.slow
def test_live_llama_cpp_agrees_on_many_strings(model_name, tok, ref):
    llama_ref = pytest.importorskip("reference.llama_ref")
    llama = llama_ref.LlamaVocabRef(MODELS[model_name]())
    assert live_mismatches(tok, llama, live_texts(ref["cases"]), add_bos=tok.add_bos)[:5] == []
    assert [i for i in range(tok.vocab_size) if tok.token_bytes(i, special=True) != llama.piece(i, True)][:5] == []


@pytest.mark.slow
@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "qwen2", "starcoder"])
def test_live_llama_cpp_agrees_under_each_pre_tokenizer(pre, tmp_path):
    llama_ref = pytest.importorskip("reference.llama_ref")
    # SmolLM2's vocabulary under another pre-tokenizer: llama.cpp loads a metadata-only copy
    copy = tmp_path / f"smollm2-{pre}.gguf"
    write_metadata_only_copy(smollm2_path(), copy, {"tokenizer.ggml.pre": pre})
    tok = tokenizer_from_gguf(GGUFFile(copy).metadata)
    llama = llama_ref.LlamaVocabRef(copy)
    ref = json.loads((REFERENCE / "tokenizer_smollm2.json").read_text(encoding="utf-8"))
    assert (tok.add_bos, tok.eog_ids) == (llama.special_ids()["add_bos"], frozenset(llama.eog_ids()))
    assert live_mismatches(tok, llama, live_texts(ref["cases"]))[:5] == []
