import json

import numpy as np

import smallmind
from model_files import gemma3_path, smollm2_path
from smallmind.cli import main
from smallmind.formats.gguf import GGUFFile


def test_generate_without_a_model_runs_the_default_gemma3(capsys):
    assert main(["generate", "The capital of France is", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    expected = "".join(smallmind.load(gemma3_path()).generate("The capital of France is", max_new_tokens=8,
                                                             temperature=0))
    assert capsys.readouterr().out == expected + "\n"


def test_inspect_counts_what_the_file_holds(capsys):
    assert main(["inspect", str(smollm2_path()), "--json", "--ctx", "1024"]) == 0
    info = json.loads(capsys.readouterr().out)
    with GGUFFile(smollm2_path()) as f:
        elements = sum(int(np.prod(t.shape)) for t in f.tensor_infos)
        stored = sum(t.nbytes for t in f.tensor_infos)
    assert info["architecture"] == "llama" and info["tokenizer"] == "gpt2" and info["chat_template"] is True
    assert info["parameters"] == elements and info["memory"]["weights_bytes"] == stored
    assert {t["type"] for t in info["tensor_types"]} == {"Q4_1", "Q8_0", "F32"}
    # 30 layers x 3 KV heads x 64 wide x 1,024 positions, keys and values, float16 as llama.cpp's
    assert info["memory"]["kv_cache_bytes"] == 2 * 30 * 3 * 1024 * 64 * 2
