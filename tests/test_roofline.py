"""The network roofline (profiler/roofline.py NetworkCost): products costed from net.products() as
stored, GB/s against the measured bandwidths, and decode against the bandwidth limit."""

from dataclasses import dataclass

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from smallmind import kernels
from smallmind.errors import SmallMindError
from smallmind.kernels.qtensor import QTensor
from smallmind.models.gpt import GPT, init_params, preset
from smallmind.profiler import engine, report, roofline
from smallmind.profiler.recorder import Recorder, ScopeNode
from smallmind.profiler.run import run_profile
from smallmind.scope import scope

SMALL_PEAKS = {"gemm_n": 128, "copy_mb": 4, "cache_copy_mb": 1, "repeats": 1}
Q8_0_BLOCK_VALUES, Q8_0_BLOCK_BYTES = 32, 34  # ggml's block_q8_0: an f16 scale and 32 int8


# ---- a tiny network of Q8_0 weights that keeps the contract (models/__init__.py) ------------

@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 96
    context_length: int = 32
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    ffn_dim: int = 128


def _q8_0(rng, rows, cols, name):
    values = rng.standard_normal((rows, cols)).astype(np.float32) * 0.1
    return QTensor("Q8_0", (rows, cols), quantize(values, GGMLQuantizationType.Q8_0), name)


class TinyWorkspace:
    def __init__(self, cfg: TinyConfig, max_tokens: int):
        T, C, F = max_tokens, cfg.d_model, cfg.ffn_dim
        HD, KD = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.max_tokens = max_tokens
        self.x, self.xn, self.y = (np.zeros((T, C), np.float32) for _ in range(3))
        self.q, self.att = np.zeros((T, HD), np.float32), np.zeros((T, HD), np.float32)
        self.k, self.v = np.zeros((T, KD), np.float32), np.zeros((T, KD), np.float32)
        self.gate, self.up, self.hidden = (np.zeros((T, F), np.float32) for _ in range(3))
        self.logits = np.zeros((1, cfg.vocab_size), np.float32)


class TinyQ8Net:
    """Gated-MLP, grouped-query attention, every matrix Q8_0; `slow_scope` repeats that scope's
    products (a planted slow product)."""

    def __init__(self, cfg: TinyConfig = TinyConfig(), seed: int = 0):
        rng = np.random.default_rng(seed)
        C, F, V = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
        HD, KD = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.config = cfg
        self.kv_spec = (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim)
        self.token_embd = rng.standard_normal((V, C)).astype(np.float32)
        self.norm = np.ones(C, np.float32)
        self.layers = [{k: _q8_0(rng, r, c, f"blk.{i}.{k}") for k, (r, c) in
                        {"wq": (HD, C), "wk": (KD, C), "wv": (KD, C), "wo": (C, HD),
                         "gate": (F, C), "up": (F, C), "down": (C, F)}.items()}
                       for i in range(cfg.n_layers)]
        self.output = _q8_0(rng, V, C, "output")

    def weights(self):
        yield "token_embd.weight", self.token_embd
        yield "output_norm.weight", self.norm
        for layer in self.layers:
            for w in layer.values():
                yield w.name + ".weight", w
        yield "output.weight", self.output

    def products(self):
        scopes = {"wq": "matmul.qkv", "wk": "matmul.qkv", "wv": "matmul.qkv", "wo": "matmul.attn_out",
                  "gate": "matmul.mlp_up", "up": "matmul.mlp_up", "down": "matmul.mlp_down"}
        for layer in self.layers:
            for key, w in layer.items():
                yield scopes[key], w
        yield "matmul.lm_head", self.output

    def workspace(self, max_tokens: int) -> TinyWorkspace:
        return TinyWorkspace(self.config, max_tokens)

    def forward(self, ws, kv, tokens, pos0, all_logits=False, logits=True):
        # tokens (T,) int32 -> (V,) logits of the last position (None without logits)
        cfg, T = self.config, len(tokens)
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        x, xn, y, q, k, v, att = (a[:T] for a in (ws.x, ws.xn, ws.y, ws.q, ws.k, ws.v, ws.att))
        gate, up, hidden = ws.gate[:T], ws.up[:T], ws.hidden[:T]
        with scope("decode" if T == 1 else "prefill"):
            with scope("embedding"):
                kernels.embedding(tokens, self.token_embd, None, 0, x)
            for layer, k_cache, v_cache in zip(self.layers, kv.k_layers, kv.v_layers):
                with scope("norm"):
                    kernels.rms_norm(x, self.norm, xn, 1e-6)
                with scope("matmul.qkv"):
                    for w, out in ((layer["wq"], q), (layer["wk"], k), (layer["wv"], v)):
                        kernels.linear(xn, w, None, out)
                with scope("kv_cache"):
                    kernels.kv_cache_store(k.reshape(T, Hkv, D), v.reshape(T, Hkv, D), k_cache, v_cache, pos0)
                with scope("attention"):
                    kernels.attention(q.reshape(T, H, D), k_cache, v_cache, pos0, att.reshape(T, H, D),
                                      1.0 / np.sqrt(D))
                with scope("matmul.attn_out"):
                    kernels.linear(att, layer["wo"], None, y)
                np.add(x, y, out=x)
                with scope("norm"):
                    kernels.rms_norm(x, self.norm, xn, 1e-6)
                with scope("matmul.mlp_up"):
                    kernels.linear(xn, layer["gate"], None, gate)
                    kernels.linear(xn, layer["up"], None, up)
                with scope("activation"):
                    kernels.geglu(gate, up, hidden)
                with scope("matmul.mlp_down"):
                    kernels.linear(hidden, layer["down"], None, y)
                np.add(x, y, out=x)
            kv.length = pos0 + T
            if not logits:
                return None
            with scope("norm"):
                kernels.rms_norm(x[T - 1:], self.norm, xn[T - 1:], 1e-6)
            with scope("matmul.lm_head"):
                kernels.linear(xn[T - 1:], self.output, None, ws.logits)
        return ws.logits[0]


class BosTokenizer:
    """Bytes as ids 1..255 (0 is BOS), BOS first where asked: as a GGUF tokenizer that wants one."""

    add_bos = True
    vocab_size = 96

    def encode(self, text, add_bos=False, special=False):
        return np.asarray(([0] if add_bos else []) + [1 + b % 95 for b in text.encode()], np.int32)

    def token_bytes(self, token, special=False):
        return bytes([token + 31]) if token else b""


def _q8_0_bytes(rows: int, cols: int) -> int:
    return rows * cols // Q8_0_BLOCK_VALUES * Q8_0_BLOCK_BYTES


# ---- the GPT: the network model gives today's analytical numbers ------------------------------

@pytest.mark.parametrize("phase, workload", [("decode", roofline.decode_workload(8, 5)),
                                             ("prefill", roofline.prefill_workload(8))])
def test_gpt_network_costs_equal_the_config_model(phase, workload):
    cfg = preset("tiny")
    cost = roofline.NetworkCost(GPT(init_params(cfg)))
    per_forward = {"matmul.lm_head": 1, "embedding": 1, "sampling": 1}  # every other scope: once per layer
    for name in ("embedding", "norm", "matmul.qkv", "kv_cache", "attention", "matmul.attn_out", "matmul.mlp_up",
                 "activation", "matmul.mlp_down", "matmul.lm_head", "sampling"):
        calls = per_forward.get(name, cfg.n_layers)
        flops, moved = cost.scope_cost(f"{phase}/{name}", calls, 1, {phase: workload})
        assert (flops / calls, moved / calls) == roofline.forward_cost(name, cfg, workload), name


def test_gpt_product_bytes_are_its_float32_matrices_and_biases():
    cfg = preset("tiny")
    C, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layers
    cost = roofline.NetworkCost(GPT(init_params(cfg)))
    assert cost.weight_bytes("matmul.qkv") == L * (3 * C * C + 3 * C) * 4
    assert cost.weight_bytes("matmul.mlp_down") == L * (4 * C * C + C) * 4
    assert cost.weight_bytes("matmul.lm_head") == V * C * 4  # the tied embedding, no bias
    assert {p.weight_type for p in cost.products} == {"F32"}


# ---- quantized weights: exactly the bytes as stored --------------------------------------------

def test_quantized_products_count_the_stored_bytes():
    net = TinyQ8Net()
    cfg = net.config
    C, F, V, L = cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.n_layers
    HD, KD = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    cost = roofline.NetworkCost(net)
    w = roofline.decode_workload(4, 3)
    flops, moved = cost.product_cost("matmul.mlp_up", w)
    assert flops == L * 2 * 2 * F * C
    # gate and up as stored, each reading x and writing its output
    assert moved == L * (2 * _q8_0_bytes(F, C) + 2 * (C + F) * 4)
    qkv_bytes = _q8_0_bytes(HD, C) + 2 * _q8_0_bytes(KD, C)
    assert cost.weight_bytes("matmul.qkv") == L * qkv_bytes
    assert cost.weight_bytes() == L * (qkv_bytes + _q8_0_bytes(C, HD) + 3 * _q8_0_bytes(F, C)) + _q8_0_bytes(V, C)
    assert {p.weight_type for p in cost.products} == {"Q8_0"}


def test_scopes_the_config_cannot_describe_are_not_modelled():
    cost = roofline.NetworkCost(TinyQ8Net())
    w = {"decode": roofline.decode_workload(4, 3)}
    assert cost.scope_cost("decode/embedding", 1, 1, w) is None  # table and position rows unknown
    assert cost.scope_cost("decode/rope", 2, 1, w) is None
    flops, moved = cost.scope_cost("decode/attention", 2, 1, w)
    assert (cost.n_heads, cost.n_kv_heads, cost.head_dim) == (4, 2, 32)
    # q in and out over every head; keys and values of the kv heads only (grouped-query attention)
    assert moved == 2 * (2 * 4 * 32 + 2 * w["decode"].kv_rows * 2 * 32) * 4


def _decode_rows(cost, mlp_down_ns: int) -> dict:
    """Roofline rows of a hand-made recording: 10 decode steps of two layers, mlp_up taking
    200 us in all and mlp_down `mlp_down_ns`."""
    recorder = Recorder()
    decode = recorder.root.children["decode"] = ScopeNode("decode", recorder.root)
    decode.calls, decode.total_ns = 10, 10_000_000
    for name, ns in (("matmul.mlp_up", 200_000), ("matmul.mlp_down", mlp_down_ns)):
        node = decode.children[name] = ScopeNode(name, decode)
        node.calls, node.total_ns, node.min_ns, node.max_ns = 20, ns, ns // 20, ns // 20
    workloads = {"decode": roofline.decode_workload(4, 3)}
    peaks = {"gflops": 50.0, "gbps": 10.0, "cache_gbps": 40.0}
    rows = report.scope_rows(recorder, 1e8, lambda p, calls, fwd: cost.scope_cost(p, calls, fwd, workloads), peaks)
    return {r["op"]: r for r in rows}


def test_product_gbps_is_its_bytes_over_its_time_against_both_bandwidths():
    cost = roofline.NetworkCost(TinyQ8Net())
    for r in _decode_rows(cost, 300_000).values():
        if r["kind"] == "container":
            continue
        seconds = r["total_ms"] / 1e3
        assert r["gbps"] == pytest.approx(r["bytes_per_call"] * r["calls"] / seconds / 1e9)
        assert r["bw_fraction"] == pytest.approx(r["gbps"] / 10.0)
        assert r["cache_bw_fraction"] == pytest.approx(r["gbps"] / 40.0)


def test_a_planted_slower_product_shows_a_lower_bandwidth_fraction():
    cost = roofline.NetworkCost(TinyQ8Net())
    normal, planted = _decode_rows(cost, 300_000), _decode_rows(cost, 3_000_000)  # mlp_down 10x slower
    assert planted["matmul.mlp_down"]["bw_fraction"] == pytest.approx(normal["matmul.mlp_down"]["bw_fraction"] / 10)
    assert planted["matmul.mlp_up"]["bw_fraction"] == normal["matmul.mlp_up"]["bw_fraction"]
    ranked = [r["op"] for r in report.furthest_from_roof(list(planted.values()), min_pct=0.0)]
    assert ranked[0] == "matmul.mlp_down"


# ---- a profile of the quantized network ----------------------------------------------------------

@pytest.fixture(scope="module")
def q8_profile():
    prompt = np.arange(1, 6, dtype=np.int32)
    return run_profile(TinyQ8Net(), source="tiny q8", prompt_ids=prompt, new_tokens=4, repeats=1,
                       architecture="tiny-q8", path="tiny.gguf", peak_kwargs=SMALL_PEAKS)


def test_profile_of_a_quantized_network_reports_products_against_bandwidth(q8_profile):
    peaks = q8_profile["peaks"]
    products = {r["name"]: r for r in q8_profile["roofline"]["products"]}
    assert set(products) == {f"{phase}/matmul.{s}" for phase in ("prefill", "decode")
                             for s in ("qkv", "attn_out", "mlp_up", "mlp_down", "lm_head")}
    up = products["decode/matmul.mlp_up"]
    assert up["weight_types"] == {"Q8_0": 4} and up["weight_bytes_per_forward"] == 4 * _q8_0_bytes(128, 64)
    seconds = up["mean_ms"] * up["calls"] / 1e3
    assert up["gbps"] == pytest.approx(up["bytes_per_call"] * up["calls"] / seconds / 1e9)
    assert up["bw_fraction"] == pytest.approx(up["gbps"] / peaks["gbps"])
    assert up["cache_bw_fraction"] == pytest.approx(up["gbps"] / peaks["cache_gbps"])


def test_decode_summary_is_bytes_per_token_over_the_step_time(q8_profile):
    d, peaks = q8_profile["roofline"]["decode"], q8_profile["peaks"]
    net = TinyQ8Net()
    assert d["weight_bytes_per_token"] == sum(w.nbytes for _, w in net.products())
    modelled = [r for r in q8_profile["scopes"] if r["kind"] == "operation" and r["name"].startswith("decode/")
                and r["bytes_per_call"] is not None]
    steps = next(r["calls"] for r in q8_profile["scopes"] if r["name"] == "decode")
    assert d["bytes_per_token"] == pytest.approx(sum(r["bytes_per_call"] * r["calls"] for r in modelled) / steps)
    assert d["bytes_per_token"] > d["weight_bytes_per_token"]
    assert d["tok_s"] == q8_profile["headline"]["decode_tok_s"]
    assert d["gbps"] == pytest.approx(d["bytes_per_token"] * d["tok_s"] / 1e9)
    assert d["roof_tok_s"] == pytest.approx(peaks["gbps"] * 1e9 / d["bytes_per_token"])
    assert d["bw_fraction"] == pytest.approx(d["gbps"] / peaks["gbps"])
    assert d["not_modelled"] == ["embedding"]


def test_model_section_names_file_architecture_and_weight_types(q8_profile, tmp_path):
    m = q8_profile["model"]
    assert (m["architecture"], m["file"]) == ("tiny-q8", "tiny.gguf")
    types = {t["type"]: t for t in m["weight_types"]}
    assert set(types) == {"Q8_0", "F32"} and types["Q8_0"]["count"] == 2 * 7 + 1
    report.write_profile(q8_profile, tmp_path)
    text = (tmp_path / "profile.md").read_text()
    assert "tiny.gguf" in text and "Q8_0 weights" in text and "config" not in text.split("## System")[0]
    assert "### Products" in text and "decode vs bandwidth" in text
    assert "decode vs bandwidth" in report.render_summary(q8_profile)


def test_training_profile_of_a_non_gpt_network_is_refused():
    with pytest.raises(SmallMindError, match="training profile needs the trainable GPT"):
        run_profile(TinyQ8Net(), source="tiny q8", prompt_ids=np.arange(1, 4, dtype=np.int32), new_tokens=2,
                    repeats=1, train=True, architecture="tiny-q8")


def test_generation_puts_bos_first_where_the_tokenizer_wants_one():
    tokenizer = BosTokenizer()
    ids = tokenizer.encode("hello", add_bos=True)
    gen = engine.Generation(TinyQ8Net(), ids, 2, tokenizer=tokenizer, prompt_text="hello")
    gen.run()
    assert gen.session.ids[:len(ids)].tolist() == ids.tolist() and ids[0] == 0
