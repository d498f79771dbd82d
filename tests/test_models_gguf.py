"""The GGUF model families: the registry, configs and weights checked against the metadata,
KV-cache decoding equal to recomputing the sequence, each family's particular rules, and
(marked slow) the real files against llama.cpp and Hugging Face transformers."""

import tracemalloc

import numpy as np
import pytest
from gguf_tiny import SIZES, SLIDING_WINDOW, write_tiny
from model_files import gemma3_path, smollm2_path

from smallmind.errors import ContextLengthError, GGUFError, SmallMindError
from smallmind.formats.gguf import GGUFFile
from smallmind.models import FAMILIES, family
from smallmind.runtime.kv_cache import KVCache, kv_dtype

ARCHS = list(SIZES)
GEMMA = gemma3_path()
SMOLLM = smollm2_path()
REAL = {"smollm2": SMOLLM, "gemma3": GEMMA}


def load(path):
    f = GGUFFile(path)
    return family(f.architecture).from_gguf(f)


def cache(net, max_len=32):
    # in the dtype the network runs with (float16 for the GGUF families)
    n_layers, n_kv_heads, head_dim = net.kv_spec
    return KVCache(n_layers, n_kv_heads, max_len, head_dim, dtype=kv_dtype(net))


def tokens(n, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


def full_logits(net, toks):
    return net.forward(net.workspace(len(toks)), cache(net), toks, 0, all_logits=True).copy()


@pytest.fixture(params=ARCHS)
def tiny(request, tmp_path):
    return request.param, load(write_tiny(tmp_path / f"{request.param}.gguf", request.param))


# ------------------------------------------------------------------ registry and configs

def test_registry_names_the_unknown_architecture_and_the_supported_ones():
    with pytest.raises(GGUFError, match="'mamba' is not supported; supported: llama, qwen2"):
        family("mamba")
    assert set(FAMILIES) == {"llama", "qwen2", "qwen3", "gemma3", "gpt2"}


def test_config_comes_from_the_metadata(tiny):
    arch, net = tiny
    layers, heads, kv_heads, head_dim = SIZES[arch]
    cfg = net.config
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.vocab_size, cfg.context_length) == (layers, heads, 64, 80, 48)
    assert net.kv_spec == (layers, kv_heads, head_dim)


def test_missing_tensors_are_all_named(tmp_path):
    path = write_tiny(tmp_path / "m.gguf", "qwen2", drop=("blk.1.attn_k.bias", "blk.0.ffn_up.weight"))
    with pytest.raises(GGUFError, match=r"lacks tensors blk\.0\.ffn_up\.weight, blk\.1\.attn_k\.bias"):
        load(path)


def test_qwen3_requires_its_qk_norms(tmp_path):
    with pytest.raises(GGUFError, match="blk.0.attn_q_norm.weight"):
        load(write_tiny(tmp_path / "m.gguf", "qwen3", drop=("blk.0.attn_q_norm.weight",)))


def test_missing_metadata_key_is_named(tmp_path):
    with pytest.raises(GGUFError, match="'llama.embedding_length' is missing"):
        load(write_tiny(tmp_path / "m.gguf", "llama", metadata={"llama.embedding_length": None}))


def test_head_counts_that_do_not_divide_are_refused(tmp_path):
    with pytest.raises(GGUFError, match="head_count 4 is not a multiple of head_count_kv 3"):
        load(write_tiny(tmp_path / "m.gguf", "llama", metadata={"llama.attention.head_count_kv": 3}))


def test_a_tensor_shape_that_contradicts_the_metadata_is_named(tmp_path):
    with pytest.raises(GGUFError, match=r"'blk\.0\.ffn_gate\.weight' has shape \(96, 64\), expected \(128, 64\)"):
        load(write_tiny(tmp_path / "m.gguf", "gemma3", metadata={"gemma3.feed_forward_length": 128}))


def test_tied_head_is_the_token_embedding_and_an_output_tensor_replaces_it(tmp_path):
    tied = load(write_tiny(tmp_path / "t.gguf", "llama"))
    untied = load(write_tiny(tmp_path / "u.gguf", "llama", tied=False))
    assert tied.output is tied.token_embd
    assert untied.output is not untied.token_embd
    assert not np.allclose(full_logits(tied, tokens(5, 80)), full_logits(untied, tokens(5, 80)))


def test_weights_lists_every_tensor_once(tiny):
    arch, net = tiny
    names = [name for name, _ in net.weights()]
    assert len(names) == len(set(names))
    assert "token_embd.weight" in names and f"blk.{SIZES[arch][0] - 1}.ffn_down.weight" in names


# ------------------------------------------------------------------ the forward

# Decoding and recomputing take different kernel paths (one row or many); with float32 weights
# they agree to rounding, with 16-bit or 8-bit ones the quantized kernels round activations the
# way llama.cpp does, and a one-ulp difference upstream may flip a rounding: a few thousandths of
# the logits' scale.
DECODE_TOLERANCE = {"F32": 1e-5, "F16": 1e-2, "Q8_0": 1e-2}


@pytest.mark.parametrize("qtype", list(DECODE_TOLERANCE))
def test_decoding_with_the_kv_cache_equals_recomputing(tmp_path, qtype):
    for arch in ARCHS:
        net = load(write_tiny(tmp_path / f"{arch}.gguf", arch, qtype=qtype))
        toks = tokens(12, 80)
        expect = full_logits(net, toks)
        ws, kv = net.workspace(12), cache(net)
        net.forward(ws, kv, toks[:4], 0)
        net.forward(ws, kv, toks[4:7], 4)  # a second prefill chunk after cached positions
        got = [net.forward(ws, kv, toks[t:t + 1], t).copy() for t in range(7, 12)]
        assert kv.length == 12
        error = np.abs(np.array(got) - expect[7:]).max() / np.abs(expect).max()
        assert error < DECODE_TOLERANCE[qtype], f"{arch} {qtype}: relative difference {error:.1e}"


def test_last_position_logits_equal_the_all_logits_row(tiny):
    _, net = tiny
    toks = tokens(9, 80)
    last = net.forward(net.workspace(9), cache(net), toks, 0).copy()
    np.testing.assert_allclose(last, full_logits(net, toks)[-1], rtol=1e-5, atol=1e-5)


def test_a_forward_without_logits_fills_the_cache_alone(tiny):
    # the prompt but its last token without logits, then the last: the logits of one prefill,
    # and the logits buffers untouched by the forward that wanted none
    _, net = tiny
    toks = tokens(9, 80, seed=5)
    ws, kv = net.workspace(9), cache(net)
    ws.logits_row.fill(np.nan)
    assert net.forward(ws, kv, toks[:8], 0, logits=False) is None
    assert kv.length == 8 and np.isnan(ws.logits_row).all()
    last = net.forward(ws, kv, toks[8:], 8).copy()
    np.testing.assert_allclose(last, full_logits(net, toks)[-1], rtol=1e-5, atol=1e-5)


def test_a_decode_step_allocates_no_buffers(tiny):
    _, net = tiny
    toks = tokens(10, 80)
    ws, kv = net.workspace(10), cache(net)
    net.forward(ws, kv, toks[:8], 0)
    net.forward(ws, kv, toks[8:9], 8)  # first step binds the cache views
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    net.forward(ws, kv, toks[9:10], 9)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    assert peak < 2048  # Python's own frames and small objects, not an activation (>= 64 floats)


def test_forward_refuses_positions_that_do_not_follow_the_cache(tiny):
    _, net = tiny
    ws, kv = net.workspace(4), cache(net)
    net.forward(ws, kv, tokens(3, 80), 0)
    with pytest.raises(ContextLengthError, match="do not follow"):
        net.forward(ws, kv, tokens(1, 80), 5)


def test_llama3_rope_freqs_change_every_position_but_the_first(tmp_path):
    with_freqs = full_logits(load(write_tiny(tmp_path / "a.gguf", "llama")), tokens(6, 80))
    without = full_logits(load(write_tiny(tmp_path / "b.gguf", "llama", drop=("rope_freqs.weight",))), tokens(6, 80))
    np.testing.assert_allclose(with_freqs[0], without[0], rtol=1e-5, atol=1e-5)  # angle 0 at position 0
    assert not np.allclose(with_freqs[1:], without[1:], atol=1e-3)


def test_gemma3_sliding_layers_see_only_the_window(tmp_path):
    # one layer (layer 0 is a sliding one): the last position sees the last SLIDING_WINDOW tokens only
    net = load(write_tiny(tmp_path / "g.gguf", "gemma3", metadata={"gemma3.block_count": 1}))
    a = tokens(12, 80)
    b = a.copy()
    b[:12 - SLIDING_WINDOW] = tokens(12 - SLIDING_WINDOW, 80, seed=5)
    la, lb = full_logits(net, a), full_logits(net, b)
    np.testing.assert_allclose(la[-1], lb[-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(la[-2], lb[-2], atol=1e-3)  # one step earlier the window reaches a changed token


def test_gemma3_sixth_layer_is_global_with_the_files_rope_base(tmp_path):
    net = load(write_tiny(tmp_path / "g.gguf", "gemma3", metadata={"gemma3.rope.freq_base": 1e6}))
    assert [layer.window for layer in net.layers] == [SLIDING_WINDOW] * 5 + [0]
    assert [layer.rope_theta for layer in net.layers] == [10000.0] * 5 + [1e6]


# ------------------------------------------------------------------ the real files

@pytest.mark.parametrize("name", list(REAL))
def test_real_model_decoding_equals_recomputing(name):
    net = load(REAL[name])
    toks = tokens(7, 1000, seed=3)
    expect = full_logits(net, toks)
    ws, kv = net.workspace(7), cache(net)
    net.forward(ws, kv, toks[:5], 0)
    got = np.array([net.forward(ws, kv, toks[t:t + 1], t).copy() for t in (5, 6)])
    assert np.isfinite(expect).all()
    # quantized weights: llama.cpp-style activation rounding amplifies path differences (above)
    error = np.abs(got - expect[5:]).max() / np.abs(expect).max()
    assert error < 0.05, f"{name}: decoding differs from recomputing by {error:.1%} of the logits' scale"
    np.testing.assert_array_equal(got.argmax(-1), expect[5:].argmax(-1))


TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk, counting the steps as his "
        "father had taught him. There were one hundred and twelve of them, worn smooth in the middle by decades "
        "of boots. At the top he trimmed the wick, polished the great lens with a soft cloth, and watched the "
        "fishing boats come home across the bay. Some nights the fog rolled in so thick that he could not see "
        "the rocks below, and on those nights he sounded the horn every thirty seconds until dawn. He kept a "
        "logbook of the weather, the ships that passed, and the birds that rested on the railing: gulls, "
        "cormorants, once a lost owl that stayed for three days. When the government finally replaced the lamp "
        "with an automatic light, he stayed on anyway, because someone had to remember how it used to be done.")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_model_agrees_with_llama_cpp(name):
    # llama.cpp quantizes activations to 8 bits, keeps K/V in f16 (as we do) and takes GELU
    # from an f16 table; run against itself with only the KV cache in f32 it agrees on 92-97%
    # of these positions (max logit difference 1.7-2.9): a last-bit change anywhere flips 8-bit
    # roundings, so that bounds what any arithmetic not bit-identical can reach. Measured here:
    # gemma3 0.930, smollm2 0.971 (max logit difference 2.4 and 1.3).
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(REAL[name]), n_ctx=512, logits_all=True, n_threads=2, verbose=False)
    toks = llm.tokenize(TEXT.encode(), add_bos=True)
    llm.eval(toks)
    ref = np.array(llm.scores[:len(toks)])
    net = load(REAL[name])
    ours = full_logits_in(net, np.array(toks, np.int32))
    agreement = (ours.argmax(-1) == ref.argmax(-1)).mean()
    print(f"{name}: {len(toks)} positions, argmax agreement {agreement:.3f}, "
          f"max |logit diff| {np.abs(ours - ref).max():.3f} (logits up to {np.abs(ref).max():.1f})")
    assert agreement >= {"gemma3": 0.9, "smollm2": 0.95}[name]
    assert np.abs(ours - ref).max() < 0.1 * np.abs(ref).max()


def full_logits_in(net, toks):
    kv = cache(net, len(toks))
    return net.forward(net.workspace(len(toks)), kv, toks, 0, all_logits=True).copy()


@pytest.mark.slow
def test_gemma3_matches_transformers_on_the_dequantized_weights():
    # the same weights in float: any difference is in the recipe, not in quantized arithmetic
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from smallmind import kernels

    f = GGUFFile(GEMMA)
    net = family("gemma3").from_gguf(f)
    c = net.config
    config = transformers.Gemma3TextConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
        rms_norm_eps=c.norm_eps, sliding_window=c.sliding_window, query_pre_attn_scalar=c.head_dim,
        max_position_embeddings=c.context_length,
        layer_types=["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(c.n_layers)],
        rope_parameters={"full_attention": {"rope_theta": c.rope_theta, "rope_type": "default"},
                         "sliding_attention": {"rope_theta": c.rope_theta_swa, "rope_type": "default"}},
        tie_word_embeddings=True, attn_implementation="eager")
    model = transformers.Gemma3ForCausalLM(config).float().eval()

    def weight(name, minus_one=False):
        t = f.tensor(name)
        if isinstance(t, kernels.QTensor):
            t = kernels.dequantize(t, np.empty(t.shape, np.float32))
        return torch.from_numpy(np.array(t, np.float32) - (1.0 if minus_one else 0.0))  # GGUF norms hold 1 + w

    state = {"model.embed_tokens.weight": weight("token_embd.weight"),
             "model.norm.weight": weight("output_norm.weight", True)}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    matrices = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
    norms = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
             "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
             "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
    for i in range(c.n_layers):
        for ours_name, hf in matrices.items():
            state[f"model.layers.{i}.{hf}.weight"] = weight(f"blk.{i}.{ours_name}.weight")
        for ours_name, hf in norms.items():
            state[f"model.layers.{i}.{hf}.weight"] = weight(f"blk.{i}.{ours_name}.weight", True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    dequantized = {id(t): kernels.dequantize(t, np.empty(t.shape, np.float32))
                   for _, t in net.weights() if isinstance(t, kernels.QTensor)}
    float_net = _with_weights(net, dequantized)
    toks = tokens(40, 20000, seed=11)
    with torch.no_grad():
        expect = model(torch.from_numpy(toks.astype(np.int64))[None]).logits[0].numpy()
    n_layers, n_kv_heads, head_dim = float_net.kv_spec  # float32 K/V: float arithmetic on both sides
    kv = KVCache(n_layers, n_kv_heads, len(toks), head_dim)
    got = float_net.forward(float_net.workspace(len(toks)), kv, toks, 0, all_logits=True)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-3)


def _with_weights(net, replacement):
    # the same network with its quantized tensors swapped for float32 copies (id -> array)
    import dataclasses

    swap = lambda t: replacement.get(id(t), t)  # noqa: E731
    layers = [dataclasses.replace(layer, **{k: swap(v) for k, v in vars(layer).items()}) for layer in net.layers]
    net.layers = tuple(layers)
    net.token_embd, net.output = swap(net.token_embd), swap(net.output)
    return net


# gpt2 has no batched step: the server's engine decodes it one sequence at a time
BATCHED = [arch for arch in ARCHS if arch != "gpt2"]


@pytest.fixture(params=BATCHED)
def batched(request, tmp_path):
    return load(write_tiny(tmp_path / f"{request.param}.gguf", request.param))


def test_a_batched_decode_step_equals_decoding_each_sequence_alone(batched):
    net = batched
    vocab = net.config.vocab_size
    prompts = [tokens(n, vocab, seed=n) for n in (3, 7, 5)]
    nxt = tokens(3, vocab, seed=99)
    alone, caches = [], []
    for p, t in zip(prompts, nxt):
        ws, kv = net.workspace(8), cache(net)
        net.forward(ws, kv, p, 0)
        alone.append(net.forward(ws, kv, t[None], len(p)).copy())
        kv2 = cache(net)
        net.forward(net.workspace(8), kv2, p, 0)
        caches.append(kv2)
    batched = net.forward_batch(net.workspace(4), caches, nxt, [len(p) for p in prompts])
    # float32 products of 3 rows and of 1 row take different tiles: equal to rounding
    alone = np.array(alone)
    assert np.abs(batched - alone).max() <= 1e-5 * np.abs(alone).max()
    np.testing.assert_array_equal(batched.argmax(-1), alone.argmax(-1))
    assert [kv.length for kv in caches] == [len(p) + 1 for p in prompts]


def test_a_batched_step_refuses_a_shared_cache_or_a_position_that_does_not_follow(batched):
    net = batched
    kv = cache(net)
    net.forward(net.workspace(4), kv, tokens(3, 50), 0)
    with pytest.raises(SmallMindError, match="its own KV cache"):
        net.forward_batch(net.workspace(4), [kv, kv], tokens(2, 50), [3, 3])
    with pytest.raises(ContextLengthError, match="does not follow"):
        net.forward_batch(net.workspace(4), [kv], tokens(1, 50), [5])
