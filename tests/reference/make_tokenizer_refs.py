"""Writes tests/reference/tokenizer_<model>.json: llama.cpp's token ids and text for test strings.

Run from the repository root, with llama-cpp-python installed:
    PYTHONPATH=src /work/main/.venv/bin/python tests/reference/make_tokenizer_refs.py
For each string: ids with and without special-token parsing, with and without the vocabulary's
add_special (BOS when the file asks for it), the detokenized text of each, and the streamed piece
of each token; plus the vocabulary's BOS/EOS/add_bos and its end-of-generation ids.
"""

import json
import sys
from pathlib import Path

import llama_cpp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gguf_meta import gemma3_path, smollm2_path  # noqa: E402
from reference.llama_ref import LlamaVocabRef  # noqa: E402

TEXTS = [
    # plain prose, punctuation, contractions
    "Hello world",
    "Hello, world! How's it going? I'm fine; you're great, they'll see, we'd go.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello , world ! What ? Really . don 't it ' s",
    "DON'T SHOUT'S 'quoted' \"double\"",
    # code
    'def add(a, b):\n    """Return the sum."""\n    return a + b\n',
    "for (int i = 0; i < n; ++i) {\n\tsum += x[i];\n}\n",
    '{"key": [1, 2.5, null], "ok": true, "nested": {"a": "b"}}',
    "if x==1:\n        y = x**2 // 3 % 7  # comment\n    elif not y: pass",
    "<div class=\"note\">&amp; &lt;tag&gt;</div>",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    # whitespace runs
    "",
    " ",
    "   ",
    "\t",
    "\t\t\t",
    "\n",
    "\n\n",
    "\n\n\n\n\n",
    " \n \n ",
    "a  b   c    d",
    "a\t\tb",
    "line1\r\nline2\r\n",
    "trailing space ",
    "  leading spaces",
    " Hello",
    " " * 40 + "x",
    "\n" * 35 + "y",
    "\t \n\t  \n \t",
    "word\u00a0nbsp\u2003em\u3000ideographic",
    # digits and numbers
    "0",
    "123",
    "1234567890",
    "3.14159265358979",
    "1,000,000 and 2.5e-10",
    "2024-01-15 12:34:56",
    "007 0x1F 0b1010",
    "٣٤٥ ४२ 12½ ²³",
    # accents and other scripts
    "café naïve façade résumé Ångström",
    "Straße ñandú Øresund",
    "e\u0301 combining acute",
    "Привет, мир! Ελληνικά",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी भाषा",
    # CJK
    "日本語のテキストです。",
    "中文测试，你好世界。",
    "한국어 텍스트",
    "漢字かなカナ混じり文",
    # emoji
    "👍",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈 flag",
    "I ❤️ NY 🗽",
    "🇫🇷🇯🇵",
    "👋🏽 wave",
    # special-token text
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<bos>text<eos>",
    "<|endoftext|>",
    "<unused0><pad><mask>",
    "<start_of_turn",
    "<<start_of_turn>>",
    "[multimodal] image",
    "before<|im_end|>after",
    "<reponame>repo<file_sep>",
    # byte fallback and rare characters
    "\x00\x01\x07",
    "\ue000\U000f0000",
    "𓀀𓁐 hieroglyphs",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "ꙮ",
    "\u0378\u0379",
    "\U0001fae8\U0001fa8f",
    "<0x41> not a byte",
    # mixed
    "# Title\n\n- item 1\n- item 2\n\n**bold** _it_ `code`",
    "https://example.com/path?q=1&r=2#frag",
    "x² + y² = z²; ∑ᵢ aᵢ ≤ ∞",
]


def reference_cases(ref: LlamaVocabRef) -> list:
    cases = []
    for text in TEXTS:
        ids = {
            "plain": ref.tokenize(text, add_special=False, special=False),
            "special": ref.tokenize(text, add_special=False, special=True),
            "add_special_plain": ref.tokenize(text, add_special=True, special=False),
            "add_special_special": ref.tokenize(text, add_special=True, special=True),
        }
        cases.append({
            "text": text,
            "ids": ids,
            "decoded": {
                "plain": ref.detokenize(ids["plain"], special=False),
                "special": ref.detokenize(ids["special"], special=True),
                "special_hidden": ref.detokenize(ids["special"], special=False),
            },
            "pieces_hex": [ref.piece(i, special=False).hex() for i in ids["special"]],
        })
    return cases


def main():
    for name, path in (("gemma3", gemma3_path()), ("smollm2", smollm2_path())):
        ref = LlamaVocabRef(path)
        record = {
            "model_file": Path(path).name,
            "llama_cpp_python": llama_cpp.__version__,
            **ref.special_ids(),
            "eog_ids": ref.eog_ids(),
            "cases": reference_cases(ref),
        }
        out = HERE / f"tokenizer_{name}.json"
        # one line per case keeps the file small and its diffs readable
        cases = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in record["cases"])
        head = json.dumps({k: v for k, v in record.items() if k != "cases"}, ensure_ascii=False)[:-1]
        out.write_text(f'{head}, "cases": [\n  {cases}\n]}}\n', encoding="utf-8")
        print(f"wrote {out} ({len(record['cases'])} cases)")


if __name__ == "__main__":
    main()
