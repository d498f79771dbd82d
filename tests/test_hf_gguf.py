import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import hf_gguf  # noqa: E402

# Tensor names llama.cpp's loaders expect, per arch, for the globals and for block 0.
EXPECTED_TENSORS = {
    "llama": {"token_embd", "output_norm", "output"}
    | {f"blk.0.{n}" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                              "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")},
    "llama3": {"rope_freqs", "token_embd", "output_norm"}
    | {f"blk.0.{n}" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                              "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")},
    "qwen2": {"token_embd", "output_norm"}
    | {f"blk.0.{n}" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                              "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")},
    "qwen3": {"token_embd", "output_norm", "output"}
    | {f"blk.0.{n}" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                              "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up",
                              "ffn_down")},
    "gpt2": {"token_embd", "position_embd", "output_norm"}
    | {f"blk.0.{n}" for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up",
                              "ffn_down")},
    "gemma3": {"token_embd", "output_norm"}
    | {f"blk.0.{n}" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                              "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm",
                              "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")},
}
EXPECTED_BIASES = {
    "qwen2": {"blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v"},
    "gpt2": {f"blk.0.{n}" for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm",
                                    "ffn_up", "ffn_down")} | {"output_norm"},
}
# arch -> (gguf arch name, block_count, head_count, head_count_kv or None, key_length or None)
EXPECTED_KEYS = {
    "llama": ("llama", 2, 4, 2, 16),
    "llama3": ("llama", 2, 4, 2, 16),
    "qwen2": ("qwen2", 2, 4, 2, None),
    "qwen3": ("qwen3", 2, 4, 2, 24),
    "gpt2": ("gpt2", 2, 4, None, None),
    "gemma3": ("gemma3", 6, 4, 2, 16),
}


@pytest.fixture(scope="module")
def models():
    return {arch: hf_gguf.make_tiny_model(arch) for arch in hf_gguf.ARCHS}


@pytest.fixture(scope="module")
def written(models, tmp_path_factory):
    # (arch, dtype) -> GGUFReader of the written file
    root = tmp_path_factory.mktemp("hf_gguf")
    return {(arch, dtype): gguf.GGUFReader(
        hf_gguf.write_gguf(models[arch], root / f"{arch}-{dtype}.gguf", dtype))
        for arch in hf_gguf.ARCHS for dtype in hf_gguf.DTYPES}


def fields(reader):
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensor(reader, name):
    # -> (numpy array as stored, ggml type)
    (t,) = [t for t in reader.tensors if t.name == name]
    return np.asarray(t.data), t.tensor_type


@pytest.mark.parametrize("arch", hf_gguf.ARCHS)
def test_file_has_the_tensors_llama_cpp_loads(written, arch):
    names = {t.name for t in written[arch, "F32"].tensors}
    block0_and_globals = {n.rsplit(".", 1)[0] for n in names
                          if not n.startswith("blk.") or n.startswith("blk.0.")}
    assert block0_and_globals == EXPECTED_TENSORS[arch]
    biases = {n.rsplit(".", 1)[0] for n in names if n.endswith(".bias")
              and (not n.startswith("blk.") or n.startswith("blk.0."))}
    assert biases == EXPECTED_BIASES.get(arch, set())


@pytest.mark.parametrize("arch", hf_gguf.ARCHS)
def test_file_has_the_hyperparameter_keys(written, models, arch):
    meta = fields(written[arch, "F32"])
    name, blocks, heads, kv_heads, key_length = EXPECTED_KEYS[arch]
    assert meta["general.architecture"] == name
    assert meta[f"{name}.block_count"] == blocks
    assert meta[f"{name}.embedding_length"] == 64
    assert meta[f"{name}.attention.head_count"] == heads
    assert meta[f"{name}.context_length"] == 256
    assert meta.get(f"{name}.attention.head_count_kv") == kv_heads
    assert meta.get(f"{name}.attention.key_length") == key_length
    assert meta.get(f"{name}.attention.value_length") == key_length
    eps_key = "layer_norm_epsilon" if arch == "gpt2" else "layer_norm_rms_epsilon"
    assert f"{name}.attention.{eps_key}" in meta
    assert (f"{name}.rope.freq_base" in meta) == (arch != "gpt2")


def test_gemma3_file_has_sliding_window_and_both_rope_bases(written):
    meta = fields(written["gemma3", "F32"])
    assert meta["gemma3.attention.sliding_window"] == 8
    assert meta["gemma3.rope.freq_base"] == 1_000_000.0
    assert meta["gemma3.rope.freq_base_swa"] == 10_000.0


def test_gemma3_model_has_both_layer_kinds_within_the_window_test_length(models):
    config = models["gemma3"].config
    assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    assert config.sliding_window < 24


@pytest.mark.parametrize("arch", hf_gguf.ARCHS)
def test_tokenizer_section_matches_the_vocabulary(written, models, arch):
    meta = fields(written[arch, "F32"])
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == models[arch].config.vocab_size == len(set(tokens))
    assert len(meta["tokenizer.ggml.token_type"]) == len(tokens)
    bos, eos = meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]
    assert bos == models[arch].config.bos_token_id
    assert eos == models[arch].config.eos_token_id
    assert meta["tokenizer.ggml.token_type"][bos] == gguf.TokenType.CONTROL
    if meta["tokenizer.ggml.model"] == "llama":
        assert len(meta["tokenizer.ggml.scores"]) == len(tokens)
        assert all(f"<0x{b:02X}>" in tokens for b in range(256))
        types = meta["tokenizer.ggml.token_type"]
        pieces = [t for t, kind in zip(tokens, types) if kind == gguf.TokenType.NORMAL]
        for piece in pieces:
            assert len(piece) == 1 or any(piece[:i] in pieces and piece[i:] in pieces
                                          for i in range(1, len(piece))), piece
    else:
        vocab = set(tokens)
        for merge in meta["tokenizer.ggml.merges"]:
            left, right = merge.split(" ")
            assert left in vocab and right in vocab and left + right in vocab


@pytest.mark.parametrize("arch", ["llama", "llama3"])
def test_llama_q_and_k_rows_are_interleaved_per_head(written, models, arch):
    # llama.cpp's llama rope rotates rows (2i, 2i+1) of a head; HF's rotates (i, i + d/2).
    layer = models[arch].model.layers[0].self_attn
    for gguf_name, hf_weight, n_head in (("blk.0.attn_q.weight", layer.q_proj.weight, 4),
                                         ("blk.0.attn_k.weight", layer.k_proj.weight, 2)):
        stored, _ = tensor(written[arch, "F32"], gguf_name)
        hf = hf_weight.detach().numpy()
        d = hf.shape[0] // n_head
        for h in range(n_head):
            for i in range(d // 2):
                np.testing.assert_array_equal(stored[h * d + 2 * i], hf[h * d + i])
                np.testing.assert_array_equal(stored[h * d + 2 * i + 1], hf[h * d + i + d // 2])


def test_llama3_rope_freqs_divide_the_plain_frequencies_into_transformers(written, models):
    factors, qtype = tensor(written["llama3", "F32"], "rope_freqs.weight")
    assert qtype == gguf.GGMLQuantizationType.F32
    hf_inv_freq = models["llama3"].model.rotary_emb.inv_freq.numpy()
    plain = 1.0 / 10000.0 ** (np.arange(0, 16, 2, dtype=np.float64) / 16)
    np.testing.assert_allclose(plain / factors, hf_inv_freq, rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0
    assert ((factors > 1.0) & (factors < 8.0)).any()


def test_gemma3_norms_are_stored_as_one_plus_weight(written, models):
    layer = models["gemma3"].model.layers[0]
    for gguf_name, hf_weight in (("blk.0.attn_norm.weight", layer.input_layernorm.weight),
                                 ("blk.0.attn_q_norm.weight", layer.self_attn.q_norm.weight),
                                 ("blk.0.post_ffw_norm.weight",
                                  layer.post_feedforward_layernorm.weight)):
        stored, _ = tensor(written["gemma3", "F32"], gguf_name)
        np.testing.assert_allclose(stored, 1.0 + hf_weight.detach().numpy(), rtol=1e-6)


def test_gpt2_fused_qkv_is_stored_out_by_in(written, models):
    stored, _ = tensor(written["gpt2", "F32"], "blk.0.attn_qkv.weight")
    conv1d = models["gpt2"].transformer.h[0].attn.c_attn.weight.detach().numpy()  # (in, out)
    assert stored.shape == (192, 64)
    np.testing.assert_array_equal(stored, conv1d.T)


def test_q8_0_file_quantizes_2d_weights_and_keeps_1d_f32(written):
    types = {t.name: t.tensor_type for t in written["qwen2", "Q8_0"].tensors}
    q8, f16, f32 = (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16,
                    gguf.GGMLQuantizationType.F32)
    assert types["token_embd.weight"] == q8
    assert types["blk.0.attn_q.weight"] == q8
    assert types["blk.0.attn_q.bias"] == f32
    assert types["blk.0.attn_norm.weight"] == f32
    # a row of 176 values is no whole number of 32-blocks: F16, as the converter falls back
    assert types["blk.0.ffn_down.weight"] == f16
    assert fields(written["qwen2", "Q8_0"])["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0


def test_gpt2_q8_0_file_keeps_position_embeddings_f32(written):
    types = {t.name: t.tensor_type for t in written["gpt2", "Q8_0"].tensors}
    assert types["position_embd.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.Q8_0


def test_f16_file_stores_matrices_f16_and_vectors_f32(written):
    types = {t.name: t.tensor_type for t in written["qwen3", "F16"].tensors}
    assert types["blk.0.attn_output.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_k_norm.weight"] == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize("dtype,rtol", [("F16", 1e-3), ("Q8_0", 1e-2)])
def test_quantized_weights_decode_to_the_model_weights(written, models, dtype, rtol):
    raw, qtype = tensor(written["llama", dtype], "blk.0.ffn_up.weight")
    decoded = gguf.quants.dequantize(raw, qtype).reshape(128, 64)
    hf = models["llama"].model.layers[0].mlp.up_proj.weight.detach().numpy()
    assert np.abs(decoded - hf).max() <= rtol * np.abs(hf).max()


def test_random_model_logits_are_not_degenerate(models):
    ids = np.random.default_rng(1).integers(0, 320, 24)
    for arch, model in models.items():
        logits = hf_gguf.hf_logits(model, ids)
        assert logits.shape == (24, 320) and logits.dtype == np.float32
        assert len(set(logits.argmax(-1).tolist())) >= 4, arch
        assert 0.5 < logits.std() < 10.0, arch


def test_write_gguf_refuses_an_unknown_dtype(models, tmp_path):
    with pytest.raises(ValueError, match="Q4_0"):
        hf_gguf.write_gguf(models["llama"], tmp_path / "x.gguf", "Q4_0")


# llama.cpp (llama-cpp-python) is the reference: its logits on our F32 GGUF must be transformers'.
# With an F32 KV cache the only rounding left is llama.cpp's GELU, which looks x up in a table
# indexed by x as F16 (gpt2, gemma3); the default F16 cache adds ~1e-3 everywhere.
LLAMA_CPP_RTOL = {"gpt2": 1e-3, "gemma3": 1e-3}
GGML_TYPE_F32 = 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", hf_gguf.ARCHS)
def test_llama_cpp_logits_match_transformers(models, tmp_path, arch):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = hf_gguf.write_gguf(models[arch], tmp_path / f"{arch}.gguf", "F32")
    ids = [int(i) for i in np.random.default_rng(2).integers(0, 320, 24)]
    ref = hf_gguf.hf_logits(models[arch], ids)
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=2,
                          type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[:len(ids)], dtype=np.float32)
    llm.close()
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < LLAMA_CPP_RTOL.get(arch, 1e-5), f"{arch}: max relative logits difference {rel:.2e}"
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.slow
@pytest.mark.parametrize("arch,text,pieces", [
    ("llama", "the and", ["\u2581the", "\u2581and"]),  # llama's SPM adds the leading space
    ("gemma3", " the and", ["\u2581the", "\u2581and"]),
    ("gpt2", " the and", ["Ġthe", "Ġand"]),
    ("qwen3", " the and", ["Ġthe", "Ġand"]),
])
def test_llama_cpp_tokenizes_with_the_written_vocabulary(written, arch, text, pieces):
    llama_cpp = pytest.importorskip("llama_cpp")
    tokens = fields(written[arch, "F32"])["tokenizer.ggml.tokens"]
    path = str(written[arch, "F32"].data.filename)
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    got = llm.tokenize(text.encode(), add_bos=False)
    llm.close()
    assert [tokens[i] for i in got] == pieces


def test_seed_picks_the_weights(models):
    again = hf_gguf.make_tiny_model("llama", seed=0)
    other = hf_gguf.make_tiny_model("llama", seed=1)
    weight = models["llama"].model.layers[0].mlp.up_proj.weight
    assert torch.equal(again.model.layers[0].mlp.up_proj.weight, weight)
    assert not torch.equal(other.model.layers[0].mlp.up_proj.weight, weight)
