import gc

import numpy as np
import pytest

from smallmind import kernels
from smallmind.errors import ContextLengthError, SmallMindError
from smallmind.kernels import reference
from smallmind.models.gpt import Workspace, forward, init_params, preset
from smallmind.models.gpt import GPT
from smallmind.runtime.kv_cache import KVCache
from smallmind.runtime.session import Session

RTOL = 1e-4


def kv_cache(cfg):
    return KVCache(cfg.n_layers, cfg.n_heads, cfg.context_length, cfg.head_dim)


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / (np.abs(b).max() + 1e-30))


def full_sequence_logits(params, tokens):
    # tokens (T,) -> logits (T,V): the whole sequence recomputed in float64, no cache, no kernels
    cfg = params.cfg
    T, H, D = tokens.shape[0], cfg.n_heads, cfg.head_dim
    w = {name: view.astype(np.float64) for name, view in params.items()}

    def norm(x, g, b):
        m = x.mean(-1, keepdims=True)
        return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + cfg.layer_norm_eps) * g + b

    x = w["wte"][tokens] + w["wpe"][:T]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(cfg.n_layers):
        p = lambda n: w[f"h.{i}.{n}"]  # noqa: E731
        qkv = norm(x, p("ln_1.weight"), p("ln_1.bias")) @ p("attn.qkv.weight").T + p("attn.qkv.bias")
        q, k, v = qkv.reshape(T, 3, H, D).transpose(1, 2, 0, 3)
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(D), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        att = (probs @ v).transpose(1, 0, 2).reshape(T, H * D)
        x = x + att @ p("attn.proj.weight").T + p("attn.proj.bias")
        h = norm(x, p("ln_2.weight"), p("ln_2.bias")) @ p("mlp.up.weight").T + p("mlp.up.bias")
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        x = x + h @ p("mlp.down.weight").T + p("mlp.down.bias")
    head = w["wte"] if cfg.tied_head else w["lm_head.weight"]
    return norm(x, w["ln_f.weight"], w["ln_f.bias"]) @ head.T


def cached_logits(params, tokens, prompt_len):
    # tokens (T,) -> logits (T,V): prefill of prompt_len tokens, then one decode step per token
    ws, kv = Workspace(params.cfg, prompt_len), kv_cache(params.cfg)
    step_ids = np.zeros(1, np.int32)
    rows = [forward(params, ws, kv, tokens[:prompt_len], 0, all_logits=True).copy()]
    for pos in range(prompt_len, tokens.shape[0]):
        step_ids[0] = tokens[pos]
        rows.append(forward(params, ws, kv, step_ids, pos)[None].copy())
    return np.concatenate(rows)


def random_tokens(cfg, n, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, n, dtype=np.int32)


@pytest.fixture(scope="module")
def tiny():
    cfg = preset("tiny")
    params = init_params(cfg, seed=3)
    # random-init norms and biases are 1 and 0: perturb them so that a swapped or dropped one shows
    rng = np.random.default_rng(4)
    for name, view in params.items():
        if view.ndim == 1:
            view += rng.normal(0.0, 0.1, view.shape).astype(np.float32)
    return params


@pytest.mark.parametrize("overrides", [
    {}, {"tied_head": False, "n_heads": 2, "n_layers": 3, "vocab_size": 97}])
def test_kv_cache_decoding_equals_recomputing_the_whole_sequence(overrides):
    cfg = preset("tiny", **overrides)
    params = init_params(cfg, seed=5)
    tokens = random_tokens(cfg, 40)
    assert rel_err(cached_logits(params, tokens, 12), full_sequence_logits(params, tokens)) < RTOL


def test_kv_cache_decoding_equals_torch_forward(tiny):
    torch = pytest.importorskip("torch")
    import torch_gpt

    tokens = random_tokens(tiny.cfg, tiny.cfg.context_length)
    model = torch_gpt.TorchGPT.from_params(tiny).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens[None].astype(np.int64)))[0].numpy()
    assert rel_err(cached_logits(tiny, tokens, 20), expected) < RTOL


def test_last_position_logits_equal_the_last_row_of_all_logits(tiny):
    tokens = random_tokens(tiny.cfg, 17)
    ws, kv = Workspace(tiny.cfg, 17), kv_cache(tiny.cfg)
    every = forward(tiny, ws, kv, tokens, 0, all_logits=True).copy()
    kv.reset()
    last = forward(tiny, ws, kv, tokens, 0)
    assert last.shape == (tiny.cfg.vocab_size,)
    assert rel_err(last, every[-1]) < 1e-6


def test_prefill_in_chunks_equals_prefill_at_once(tiny):
    tokens = random_tokens(tiny.cfg, 30)
    ws, kv = Workspace(tiny.cfg, 30), kv_cache(tiny.cfg)
    at_once = forward(tiny, ws, kv, tokens, 0, all_logits=True).copy()
    cache_at_once = kv.k[:, :, :30].copy(), kv.v[:, :, :30].copy()
    kv.reset()
    chunks = [forward(tiny, ws, kv, tokens[a:b], a, all_logits=True).copy() for a, b in ((0, 7), (7, 8), (8, 30))]
    assert rel_err(np.concatenate(chunks), at_once) < RTOL
    assert rel_err(kv.k[:, :, :30], cache_at_once[0]) < RTOL
    assert rel_err(kv.v[:, :, :30], cache_at_once[1]) < RTOL


def test_default_kernels_give_the_reference_kernels_logits_and_tokens(tiny, monkeypatch):
    tokens = random_tokens(tiny.cfg, 24)

    def greedy_run():
        ws, kv = Workspace(tiny.cfg, 8), kv_cache(tiny.cfg)
        step_ids = np.zeros(1, np.int32)
        logits = forward(tiny, ws, kv, tokens[:8], 0).copy()
        picked, rows = [], [logits]
        for pos in range(8, 40):
            step_ids[0] = int(logits.argmax())
            picked.append(int(step_ids[0]))
            logits = forward(tiny, ws, kv, step_ids, pos).copy()
            rows.append(logits)
        return picked, np.stack(rows)

    default_tokens, default_logits = greedy_run()
    for name in kernels.KERNEL_NAMES:
        monkeypatch.setattr(kernels, name, getattr(reference, name))
    reference_tokens, reference_logits = greedy_run()
    assert default_tokens == reference_tokens
    assert rel_err(default_logits, reference_logits) < RTOL


def test_rewinding_the_cache_recomputes_from_that_position(tiny):
    tokens = random_tokens(tiny.cfg, 20)
    other = random_tokens(tiny.cfg, 20, seed=9)
    ws, kv = Workspace(tiny.cfg, 20), kv_cache(tiny.cfg)
    forward(tiny, ws, kv, other, 0)
    forward(tiny, ws, kv, tokens[:10], 0)  # overwrites positions 0..9, forgets 10..19
    assert kv.length == 10
    resumed = forward(tiny, ws, kv, tokens[10:], 10, all_logits=True)
    assert rel_err(resumed, full_sequence_logits(tiny, tokens)[10:]) < RTOL


def test_positions_past_the_context_raise_context_length_error(tiny):
    ctx = tiny.cfg.context_length
    ws, kv = Workspace(tiny.cfg, ctx), kv_cache(tiny.cfg)
    step_ids = np.zeros(1, np.int32)
    forward(tiny, ws, kv, random_tokens(tiny.cfg, ctx), 0)
    step_ids[0] = 1
    with pytest.raises(ContextLengthError, match="context length"):
        forward(tiny, ws, kv, step_ids, ctx)


def test_a_gap_after_the_cached_positions_is_refused(tiny):
    ws, kv = Workspace(tiny.cfg, 4), kv_cache(tiny.cfg)
    step_ids = np.zeros(1, np.int32)
    forward(tiny, ws, kv, random_tokens(tiny.cfg, 4), 0)
    step_ids[0] = 1
    with pytest.raises(ContextLengthError, match="do not follow the 4 cached positions"):
        forward(tiny, ws, kv, step_ids, 6)


def test_more_tokens_than_the_workspace_holds_is_refused(tiny):
    ws, kv = Workspace(tiny.cfg, 4), kv_cache(tiny.cfg)
    with pytest.raises(ContextLengthError, match="1..4 tokens"):
        forward(tiny, ws, kv, random_tokens(tiny.cfg, 5), 0)
    with pytest.raises(ContextLengthError):
        Workspace(tiny.cfg, tiny.cfg.context_length + 1)


def test_weights_of_another_config_are_refused(tiny):
    other = init_params(preset("tiny", vocab_size=100))
    ws, kv = Workspace(tiny.cfg, 4), kv_cache(tiny.cfg)
    with pytest.raises(SmallMindError, match="different model config"):
        forward(other, ws, kv, random_tokens(tiny.cfg, 4) % 100, 0)


def test_kv_cache_is_preallocated_per_layer_to_the_context():
    cache = KVCache(n_layers=3, n_kv_heads=2, max_len=16, head_dim=8)
    assert cache.k_layers[1].shape == (2, 16, 8) and cache.v_layers[2].shape == (2, 16, 8)
    assert np.shares_memory(cache.k_layers[1], cache.k) and cache.nbytes == 2 * 3 * 2 * 16 * 8 * 4
    cache.length = 5
    cache.reset()
    assert cache.length == 0


def _fake_kernels(monkeypatch, record):
    # kernels with the contract's signatures that do no math, only record((arrays handed over)):
    # what is left to measure is the model's own code
    def linear(x, w, b, out, accumulate=False):
        record((x, w, b, out))

    def embedding(tokens, wte, wpe, pos0, out):
        record((tokens, wte, wpe, out))

    def layer_norm(x, weight, bias, out, eps=1e-5, mean=None, rstd=None):
        record((x, weight, bias, out))

    def gelu(x, out):
        record((x, out))

    def kv_cache_store(k, v, k_cache, v_cache, pos0):
        record((k, v, k_cache, v_cache))

    def attention(q, k_cache, v_cache, pos0, out, scale):
        record((q, k_cache, v_cache, out))

    for fn in (linear, embedding, layer_norm, gelu, kv_cache_store, attention):
        monkeypatch.setattr(kernels, fn.__name__, fn)


def test_every_decode_step_hands_the_kernels_the_same_preallocated_arrays(tiny, monkeypatch):
    calls = []
    _fake_kernels(monkeypatch, calls.append)
    ws, kv = Workspace(tiny.cfg, 8), kv_cache(tiny.cfg)
    step_ids = np.zeros(1, np.int32)
    forward(tiny, ws, kv, random_tokens(tiny.cfg, 8), 0)
    calls.clear()
    forward(tiny, ws, kv, step_ids, 8)
    first = list(calls)
    calls.clear()
    forward(tiny, ws, kv, step_ids, 9)
    assert len(first) == 1 + 9 * tiny.cfg.n_layers + 2
    # `is`, not id(): the first step's arrays are still alive, so a new view cannot reuse an address
    assert len(calls) == len(first)
    assert all(a is b for step1, step2 in zip(first, calls) for a, b in zip(step1, step2))


def test_prefill_for_the_last_logits_runs_the_last_blocks_tail_on_one_row(tiny, monkeypatch):
    calls = []
    _fake_kernels(monkeypatch, calls.append)
    ws, kv = Workspace(tiny.cfg, 8), kv_cache(tiny.cfg)
    forward(tiny, ws, kv, random_tokens(tiny.cfg, 8), 0)
    rows = [arrays[0].shape[0] for arrays in calls]  # the first array of each call is its input
    per_block = 9
    last_block = rows[1 + per_block * (tiny.cfg.n_layers - 1):][:per_block]
    # norm, qkv and the cache store see all 8 rows; attention onwards only the last one
    assert last_block == [8, 8, 8, 1, 1, 1, 1, 1, 1]
    assert rows[1:1 + per_block] == [8] * per_block


def test_the_decode_step_itself_leaves_nothing_allocated(tiny, monkeypatch):
    import tracemalloc

    _fake_kernels(monkeypatch, lambda arrays: None)
    ws, kv = Workspace(tiny.cfg, 8), kv_cache(tiny.cfg)
    step_ids = np.zeros(1, np.int32)
    forward(tiny, ws, kv, random_tokens(tiny.cfg, 8), 0)
    forward(tiny, ws, kv, step_ids, 8)
    peaks = np.zeros(32, dtype=np.int64)  # an array: a list of ints would grow the heap itself
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for step in range(32):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            forward(tiny, ws, kv, step_ids, 9 + step)
            peaks[step] = tracemalloc.get_traced_memory()[1] - before
        growth = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    # what a step has live at once: the bound __enter__/__exit__ methods of nested `with scope(...)`
    # and a few ints, all freed by the step's end
    assert peaks.max() < 512
    assert growth <= 64


needs_native = pytest.mark.skipif(
    kernels.path == "numpy", reason="the NumPy reference kernels allocate temporaries by design")


@needs_native
def test_decode_allocates_under_1kb_per_token():
    from smallmind.bench.inference import decode_allocations
    from smallmind.runtime.sampler import Sampler

    cfg = preset("seed")
    params = init_params(cfg)
    session = Session(GPT(params), 83, prefill_chunk=32)
    result = decode_allocations(session, Sampler(cfg.vocab_size, temperature=0.0),
                                random_tokens(cfg, 32), 50)
    assert result["steps"] == 50
    assert result["bytes_per_token"] < 1024


def test_decoding_50_tokens_triggers_no_garbage_collection():
    from smallmind.bench.inference import decode_gc_collections
    from smallmind.runtime.sampler import Sampler

    cfg = preset("seed")
    params = init_params(cfg)
    session = Session(GPT(params), 82, prefill_chunk=32)
    sampler = Sampler(cfg.vocab_size, temperature=0.0)
    assert decode_gc_collections(session, sampler, random_tokens(cfg, 32), 50) == 0


def test_gc_counter_sees_collections_when_a_step_makes_garbage():
    # the zero above means something only if the counter does count: make cyclic garbage per step
    from smallmind.bench.inference import decode_gc_collections

    class LeakySampler:
        def sample(self, logits):
            for _ in range(1000):
                a = []
                a.append(a)
            return 1

    cfg = preset("tiny")
    params = init_params(cfg)
    session = Session(GPT(params), 14, prefill_chunk=4)
    before = gc.isenabled()
    assert decode_gc_collections(session, LeakySampler(), random_tokens(cfg, 4), 10) > 0
    assert gc.isenabled() == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seed", "small"])
def test_presets_decode_like_torch_over_the_whole_context(name):
    torch = pytest.importorskip("torch")
    import torch_gpt

    params = init_params(preset(name), seed=1)
    tokens = random_tokens(params.cfg, params.cfg.context_length)
    model = torch_gpt.TorchGPT.from_params(params).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens[None].astype(np.int64)))[0].numpy()
    assert rel_err(cached_logits(params, tokens, 16), expected) < RTOL


def test_forward_batch_gives_each_sequence_the_logits_and_greedy_tokens_of_decoding_it_alone():
    cfg = preset("tiny")
    net = GPT(init_params(cfg, seed=5))
    prompts = [np.array(p, np.int32) for p in ([1, 2, 3, 4, 5], [9], [40, 41, 42], [7, 7, 7, 7, 7, 7, 7])]
    alone, batch = [Session(net, 32) for _ in prompts], [Session(net, 32) for _ in prompts]
    ws = net.workspace(len(prompts))
    tokens = [int(a.prefill(p).argmax()) for a, p in zip(alone, prompts)]
    for b, p in zip(batch, prompts):
        b.prefill(p)
    batched_tokens = list(tokens)
    for _ in range(8):
        expected = np.stack([a.step(t) for a, t in zip(alone, tokens)])
        got = net.forward_batch(ws, [s.kv for s in batch], np.array(batched_tokens, np.int32),
                                np.array([s.length for s in batch]))
        assert rel_err(got, expected) < RTOL
        tokens = [int(row.argmax()) for row in expected]
        batched_tokens = [int(row.argmax()) for row in got]
        assert batched_tokens == tokens
    assert [s.kv.length for s in batch] == [a.kv.length for a in alone]


@pytest.mark.parametrize("rows, positions, message", [
    (1, [5], "position 5 does not follow"),
    (2, [2, 2], "its own KV cache"),
    (3, [2, 2, 2], "1..2 rows"),
])
def test_forward_batch_refuses_rows_it_cannot_run(rows, positions, message):
    cfg = preset("tiny")
    net = GPT(init_params(cfg, seed=5))
    s = Session(net, 16)
    s.prefill(np.array([1, 2], np.int32))
    with pytest.raises(SmallMindError, match=message):
        net.forward_batch(net.workspace(2), [s.kv] * rows, np.full(rows, 3, np.int32), np.array(positions))


def test_forward_batch_refuses_a_position_beyond_the_position_embeddings():
    # a cache longer than the context: the position would index past wpe
    cfg = preset("tiny")
    net = GPT(init_params(cfg, seed=5))
    kv = KVCache(cfg.n_layers, cfg.n_heads, cfg.context_length + 4, cfg.head_dim)
    kv.length = cfg.context_length
    with pytest.raises(ContextLengthError, match="beyond the context length"):
        net.forward_batch(net.workspace(1), [kv], np.array([3], np.int32), np.array([cfg.context_length]))
