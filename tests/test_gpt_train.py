import numpy as np
import pytest

from smallmind.errors import SmallMindError
from smallmind.models.gpt import GPTConfig, init_params, preset
from smallmind.models.gpt_train import TrainWorkspace, backward, forward

# (config, batch, seq): tied and untied heads, different widths, heads, depths, vocabularies,
# batch > 1, and seq shorter than the context
CONFIGS = [
    (GPTConfig(vocab_size=67, context_length=16, d_model=32, n_layers=2, n_heads=4), 3, 11),
    (GPTConfig(vocab_size=50, context_length=12, d_model=24, n_layers=1, n_heads=2, tied_head=False), 2, 12),
    (GPTConfig(vocab_size=101, context_length=20, d_model=48, n_layers=3, n_heads=6, tied_head=False), 4, 7),
    (GPTConfig(vocab_size=2, context_length=5, d_model=8, n_layers=2, n_heads=1), 1, 5),
]
TOL = 1e-4


def rel_err(ours, ref):
    # ours, ref: same-shape arrays -> max abs difference relative to the reference's largest entry
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(ours - ref)) / (np.max(np.abs(ref)) + 1e-30))


def random_params(cfg, seed):
    # GPT-2 init leaves biases at 0 and norms at 1; randomise them too so their gradients are tested
    p = init_params(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    for view in p.views.values():
        if view.ndim == 1:
            view += rng.normal(0.0, 0.1, view.shape).astype(np.float32)
    return p


def batch(cfg, B, T, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int32)
    targets = rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int32)
    return tokens, targets


def ours_step(params, tokens, targets):
    ws = TrainWorkspace(params.cfg, *tokens.shape)
    grads = params.zeros_like()
    loss = forward(params, ws, tokens, targets)
    backward(params, grads, ws)
    return loss, ws.logits.copy(), grads


def torch_step(params, tokens, targets):
    import torch
    import torch.nn.functional as F
    from torch_gpt import TorchGPT

    model = TorchGPT.from_params(params)
    logits = model(torch.from_numpy(tokens.astype(np.int64)))
    flat_targets = torch.from_numpy(targets.astype(np.int64)).reshape(-1)
    loss = F.cross_entropy(logits.reshape(-1, params.cfg.vocab_size), flat_targets)
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in model.param_map().items()}
    return loss.item(), logits.detach().numpy(), grads


def assert_step_matches_torch(cfg, B, T, seed):
    # one training step's loss, logits and every gradient against PyTorch's, within TOL
    params = random_params(cfg, seed)
    tokens, targets = batch(cfg, B, T, seed)
    loss, logits, grads = ours_step(params, tokens, targets)
    ref_loss, ref_logits, ref = torch_step(params, tokens, targets)
    assert rel_err(logits, ref_logits) < TOL
    assert abs(loss - ref_loss) / ref_loss < TOL
    errors = {name: rel_err(grads[name], ref[name]) for name in ref}
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("case", range(len(CONFIGS)))
def test_forward_logits_and_loss_match_torch(case):
    cfg, B, T = CONFIGS[case]
    params = random_params(cfg, case)
    tokens, targets = batch(cfg, B, T, case)
    loss, logits, _ = ours_step(params, tokens, targets)
    ref_loss, ref_logits, _ = torch_step(params, tokens, targets)
    assert rel_err(logits, ref_logits) < TOL
    assert abs(loss - ref_loss) / abs(ref_loss) < TOL


@pytest.mark.parametrize("case", range(len(CONFIGS)))
def test_every_parameter_gradient_matches_torch(case):
    cfg, B, T = CONFIGS[case]
    params = random_params(cfg, case)
    tokens, targets = batch(cfg, B, T, case)
    _, _, grads = ours_step(params, tokens, targets)
    _, _, ref = torch_step(params, tokens, targets)
    assert set(ref) == set(grads.views)
    errors = {name: rel_err(grads[name], ref[name]) for name in ref}
    assert max(errors.values()) < TOL, errors


def test_gradients_match_torch_on_the_numpy_reference_kernels(monkeypatch):
    # the model must be right on either kernel path, whichever one this machine dispatches to
    from smallmind import kernels
    from smallmind.kernels import reference

    for name in kernels.KERNEL_NAMES:
        monkeypatch.setattr(kernels, name, getattr(reference, name))
    assert_step_matches_torch(*CONFIGS[2], 2)


def test_gradient_check_catches_a_wrong_gradient():
    # the tolerance is strict enough that a real bug (one gradient entry off by 1%) fails it
    cfg, B, T = CONFIGS[0]
    params = random_params(cfg, 0)
    tokens, targets = batch(cfg, B, T, 0)
    _, _, grads = ours_step(params, tokens, targets)
    _, _, ref = torch_step(params, tokens, targets)
    for name in ("h.1.attn.qkv.weight", "ln_f.bias", "wpe"):
        wrong = grads[name].copy()
        i = np.unravel_index(np.argmax(np.abs(wrong)), wrong.shape)
        wrong[i] *= 1.01
        assert rel_err(wrong, ref[name]) > TOL


def test_backward_accumulates_and_scales():
    cfg, B, T = CONFIGS[0]
    params = random_params(cfg, 3)
    tokens, targets = batch(cfg, B, T, 3)
    _, _, once = ours_step(params, tokens, targets)
    ws = TrainWorkspace(cfg, B, T)
    grads = params.zeros_like()
    forward(params, ws, tokens, targets)
    backward(params, grads, ws)
    backward(params, grads, ws, loss_scale=0.5)
    np.testing.assert_allclose(grads.flat, 1.5 * once.flat, rtol=1e-5, atol=1e-7)


def test_forward_leaves_logits_intact_after_scaled_backward():
    cfg, B, T = CONFIGS[1]
    params = random_params(cfg, 4)
    tokens, targets = batch(cfg, B, T, 4)
    ws = TrainWorkspace(cfg, B, T)
    forward(params, ws, tokens, targets)
    logits = ws.logits.copy()
    backward(params, params.zeros_like(), ws, loss_scale=0.25)
    np.testing.assert_array_equal(ws.logits, logits)


def test_forward_without_targets_returns_nan_and_the_same_logits():
    cfg, B, T = CONFIGS[2]
    params = random_params(cfg, 5)
    tokens, targets = batch(cfg, B, T, 5)
    ws = TrainWorkspace(cfg, B, T)
    forward(params, ws, tokens, targets)
    with_targets = ws.logits.copy()
    assert np.isnan(forward(params, ws, tokens))
    np.testing.assert_array_equal(ws.logits, with_targets)


def test_backward_without_targets_is_refused():
    cfg, B, T = CONFIGS[0]
    params = random_params(cfg, 0)
    ws = TrainWorkspace(cfg, B, T)
    forward(params, ws, batch(cfg, B, T, 0)[0])
    with pytest.raises(SmallMindError, match="targets"):
        backward(params, params.zeros_like(), ws)


def test_workspace_refuses_seq_beyond_context():
    with pytest.raises(SmallMindError, match="context length"):
        TrainWorkspace(preset("tiny"), 2, 65)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 7), dtype=np.int32), "shape"),
    (np.full((3, 11), 67, dtype=np.int32), "outside"),
    (np.full((3, 11), -1, dtype=np.int64), "outside"),
    (np.zeros((3, 11), dtype=np.float32), "integer"),
])
def test_forward_refuses_bad_tokens(bad, message):
    cfg, B, T = CONFIGS[0]
    params = random_params(cfg, 0)
    with pytest.raises(SmallMindError, match=message):
        forward(params, TrainWorkspace(cfg, B, T), bad)


def test_forward_refuses_params_of_another_config():
    cfg, B, T = CONFIGS[0]
    with pytest.raises(SmallMindError, match="different model configs"):
        forward(init_params(CONFIGS[1][0]), TrainWorkspace(cfg, B, T), batch(cfg, B, T, 0)[0])


# ---- dropout -------------------------------------------------------------------------------

DROPOUT_CFG = GPTConfig(vocab_size=40, context_length=10, d_model=16, n_layers=2, n_heads=2, dropout=0.3)


def dropout_step(cfg, params, tokens, targets, rng):
    ws = TrainWorkspace(cfg, *tokens.shape)
    grads = params.zeros_like()
    loss = forward(params, ws, tokens, targets, dropout_rng=rng)
    backward(params, grads, ws)
    return loss, grads, ws


def test_dropout_is_deterministic_per_seed():
    params = random_params(DROPOUT_CFG, 0)
    tokens, targets = batch(DROPOUT_CFG, 2, 9, 0)
    a = dropout_step(DROPOUT_CFG, params, tokens, targets, np.random.default_rng(7))
    b = dropout_step(DROPOUT_CFG, params, tokens, targets, np.random.default_rng(7))
    c = dropout_step(DROPOUT_CFG, params, tokens, targets, np.random.default_rng(8))
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1].flat, b[1].flat)
    assert a[0] != c[0]


def test_dropout_changes_the_loss_and_no_rng_means_no_dropout():
    params = random_params(DROPOUT_CFG, 1)
    tokens, targets = batch(DROPOUT_CFG, 2, 9, 1)
    plain_cfg = GPTConfig(**{**DROPOUT_CFG.to_dict(), "dropout": 0.0})
    plain = dropout_step(plain_cfg, random_params(plain_cfg, 1), tokens, targets, None)
    no_rng = dropout_step(DROPOUT_CFG, params, tokens, targets, None)
    dropped = dropout_step(DROPOUT_CFG, params, tokens, targets, np.random.default_rng(0))
    assert no_rng[0] == plain[0]
    np.testing.assert_array_equal(no_rng[1].flat, plain[1].flat)
    assert dropped[0] != plain[0]


def test_zero_dropout_with_rng_equals_no_dropout():
    cfg = GPTConfig(**{**DROPOUT_CFG.to_dict(), "dropout": 0.0})
    params = random_params(cfg, 2)
    tokens, targets = batch(cfg, 2, 9, 2)
    with_rng = dropout_step(cfg, params, tokens, targets, np.random.default_rng(0))
    without = dropout_step(cfg, params, tokens, targets, None)
    assert with_rng[0] == without[0]
    np.testing.assert_array_equal(with_rng[1].flat, without[1].flat)


def test_dropout_masks_keep_the_expected_fraction_and_scale():
    cfg = GPTConfig(vocab_size=40, context_length=64, d_model=64, n_layers=1, n_heads=2, dropout=0.25)
    params = init_params(cfg, 0)
    ws = TrainWorkspace(cfg, 4, 64)
    forward(params, ws, batch(cfg, 4, 64, 0)[0], dropout_rng=np.random.default_rng(0))
    mask = ws.dropout_masks["attn_out"]
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert abs((mask == 0).mean() - 0.25) < 0.02


def torch_dropout_reference(params, ws, tokens, targets):
    # the same network in torch autograd, applying the dropout masks our forward drew
    import torch
    import torch.nn.functional as F

    cfg = params.cfg
    B, T = tokens.shape
    C, H, D = cfg.d_model, cfg.n_heads, cfg.head_dim
    w = {name: torch.tensor(view, requires_grad=True) for name, view in params.items()}
    m = {name: torch.from_numpy(mask) for name, mask in ws.dropout_masks.items()}
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = (w["wte"][torch.from_numpy(tokens.astype(np.int64))] + w["wpe"][:T]) * m["embedded"].reshape(B, T, C)
    for l in range(cfg.n_layers):
        h = f"h.{l}."
        a = F.layer_norm(x, (C,), w[h + "ln_1.weight"], w[h + "ln_1.bias"], cfg.layer_norm_eps)
        qkv = F.linear(a, w[h + "attn.qkv.weight"], w[h + "attn.qkv.bias"])
        q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        probs = torch.softmax((q @ k.transpose(-1, -2) / D ** 0.5).masked_fill(~causal, float("-inf")), dim=-1)
        y = ((probs * m["probs"][l]) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, w[h + "attn.proj.weight"], w[h + "attn.proj.bias"]) * m["attn_out"][l].reshape(B, T, C)
        a = F.layer_norm(x, (C,), w[h + "ln_2.weight"], w[h + "ln_2.bias"], cfg.layer_norm_eps)
        u = F.gelu(F.linear(a, w[h + "mlp.up.weight"], w[h + "mlp.up.bias"]), approximate="tanh")
        x = x + F.linear(u, w[h + "mlp.down.weight"], w[h + "mlp.down.bias"]) * m["mlp_out"][l].reshape(B, T, C)
    x = F.layer_norm(x, (C,), w["ln_f.weight"], w["ln_f.bias"], cfg.layer_norm_eps)
    logits = x @ (w["wte"] if cfg.tied_head else w["lm_head.weight"]).T
    loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), torch.from_numpy(targets.astype(np.int64)).reshape(-1))
    loss.backward()
    return loss.item(), {name: t.grad.numpy() for name, t in w.items()}


def test_dropout_forward_and_gradients_match_torch_with_the_same_masks():
    params = random_params(DROPOUT_CFG, 3)
    tokens, targets = batch(DROPOUT_CFG, 3, 8, 3)
    loss, grads, ws = dropout_step(DROPOUT_CFG, params, tokens, targets, np.random.default_rng(11))
    ref_loss, ref = torch_dropout_reference(params, ws, tokens, targets)
    assert abs(loss - ref_loss) / ref_loss < TOL
    errors = {name: rel_err(grads[name], ref[name]) for name in ref}
    assert max(errors.values()) < TOL, errors


# ---- the torch twin itself -------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_torch_twin_kv_cache_path_matches_its_full_forward(tied):
    import torch
    from torch_gpt import TorchGPT

    cfg = GPTConfig(vocab_size=37, context_length=16, d_model=32, n_layers=2, n_heads=4, tied_head=tied)
    model = TorchGPT.from_params(random_params(cfg, 6)).eval()
    idx = torch.from_numpy(batch(cfg, 2, 14, 6)[0].astype(np.int64))
    with torch.no_grad():
        full = model(idx).numpy()
    assert rel_err(model.prefill(idx[:, :9]).numpy(), full[:, 8]) < 1e-5
    for t in range(9, 14):
        assert rel_err(model.decode_step(idx[:, t]).numpy(), full[:, t]) < 1e-5


# ---- heavier sweep ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])
def test_seed_preset_gradients_match_torch(tied):
    assert_step_matches_torch(preset("seed", tied_head=tied), 4, 128, 9)


# ---- training as a whole -----------------------------------------------------------------------

def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    from smallmind.runtime.optim import AdamW

    cfg, B, T = CONFIGS[0]
    params = init_params(cfg, 0)
    grads = params.zeros_like()
    ws = TrainWorkspace(cfg, B, T)
    opt = AdamW(params)
    tokens, targets = batch(cfg, B, T, 0)
    losses = []
    for _ in range(30):
        grads.flat.fill(0.0)
        losses.append(forward(params, ws, tokens, targets))
        backward(params, grads, ws)
        opt.step(grads, 3e-3)
    assert losses[0] == pytest.approx(np.log(cfg.vocab_size), rel=0.05)
    assert losses[-1] < 0.5 * losses[0]


def test_forward_and_backward_report_their_operation_scopes():
    from smallmind.profiler.recorder import Recorder, recording

    cfg, B, T = CONFIGS[0]
    params = init_params(cfg, 0)
    ws = TrainWorkspace(cfg, B, T)
    with recording(Recorder()) as recorder:
        forward(params, ws, *batch(cfg, B, T, 0))
        backward(params, params.zeros_like(), ws)
    paths = {node.path for node in recorder.nodes()}
    # the GELU and its gradient run inside the MLP's products (fused), not in a scope of their own
    ops = {"embedding", "norm", "matmul.qkv", "attention", "matmul.attn_out", "matmul.mlp_up",
           "matmul.mlp_down", "matmul.lm_head"}
    assert {f"forward/{op}" for op in ops | {"loss"}} <= paths
    assert {f"backward/{op}" for op in ops} <= paths


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("batch, seq", [(1, 1), (3, 17)])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_workspace_size_estimate_equals_what_it_allocates(dropout, batch, seq, precision):
    # the trainer refuses a batch from this estimate before allocating: it must not drift
    cfg = preset("tiny", vocab_size=100, dropout=dropout)
    ws = TrainWorkspace(cfg, batch, seq, precision)
    arrays = [v for v in vars(ws).values() if isinstance(v, np.ndarray)]
    arrays += [a for v in vars(ws).values() if isinstance(v, dict) for a in v.values()]
    arrays += [v.flat for v in vars(ws).values() if hasattr(v, "flat") and not isinstance(v, np.ndarray)]
    assert TrainWorkspace.nbytes_for(cfg, batch, seq, precision) == sum(a.nbytes for a in arrays)


def test_a_training_batch_that_cannot_fit_is_refused_before_allocating():
    with pytest.raises(SmallMindError, match="a training batch of 100000000 x 64 tokens would need"):
        TrainWorkspace(preset("tiny"), 100_000_000, 64)


# ---- every kernel path, and mixed precision ------------------------------------------------

def _kernel_paths():
    from smallmind import kernels

    paths = ["numpy"]
    if kernels.path != "numpy":
        from smallmind.kernels import native

        for isa in ("generic", "avx2", "avx512"):
            try:
                native.select_isa(isa)
                paths.append(isa)
            except ValueError:
                pass
        native.select_isa("best")
        for gemm in ("avx512-emulated", "amx-emulated"):  # the AVX-512 and AMX GEMM builds on AVX2
            if "avx2" in paths and gemm in native.supported_gemm_isas():
                paths.append(f"avx2+gemm-{gemm}")
    return paths


@pytest.fixture(params=_kernel_paths())
def kernel_path(request, monkeypatch):
    # the NumPy twins, or one native ISA with every product on the native GEMM (not BLAS)
    from smallmind import kernels
    from smallmind.kernels import reference

    if request.param == "numpy":
        for name in kernels.KERNEL_NAMES:
            monkeypatch.setattr(kernels, name, getattr(reference, name))
        yield request.param
        return
    from smallmind.kernels import native

    isa, _, gemm = request.param.partition("+gemm-")
    native.select_isa(isa)
    if gemm:
        native.select_gemm_isa(gemm)
    previous = native.gemm_min_rows(0)
    yield request.param
    native.gemm_min_rows(previous)
    native.select_isa("best")


@pytest.mark.parametrize("case", [2, "seed"])
def test_losses_and_gradients_match_torch_on_every_kernel_path(kernel_path, case):
    if case == "seed":  # 256 rows: several k blocks and row tasks in every product
        cfg, B, T = preset("seed", tied_head=False), 2, 128
    else:
        cfg, B, T = CONFIGS[case]
    assert_step_matches_torch(cfg, B, T, 5)


def bf16_step(params, tokens, targets):
    ws = TrainWorkspace(params.cfg, *tokens.shape, precision="bf16")
    grads = params.zeros_like()
    loss = forward(params, ws, tokens, targets)
    backward(params, grads, ws)
    return loss, ws, grads


def torch_autocast_step(params, tokens, targets):
    import torch
    import torch.nn.functional as F
    from torch_gpt import TorchGPT

    model = TorchGPT.from_params(params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.from_numpy(tokens.astype(np.int64)))
    flat_targets = torch.from_numpy(targets.astype(np.int64)).reshape(-1)
    loss = F.cross_entropy(logits.float().reshape(-1, params.cfg.vocab_size), flat_targets)
    loss.backward()
    return loss.item(), {name: p.grad.float().numpy() for name, p in model.param_map().items()}


def test_bf16_products_read_rounded_weights_and_activations():
    cfg, B, T = CONFIGS[0]
    params = random_params(cfg, 0)
    _, ws, _ = bf16_step(params, *batch(cfg, B, T, 0))
    for rounded in (ws.weights_bf16.flat, ws.ln_1, ws.ln_2, ws.att, ws.mlp_act, ws.ln_f):
        assert not (rounded.view(np.uint32) & 0xFFFF).any()
    assert (ws.mlp_pre.view(np.uint32) & 0xFFFF).any()  # the GELU's input (its gradient's too) stays float32
    np.testing.assert_array_equal(params.flat, random_params(cfg, 0).flat)  # master weights untouched


@pytest.mark.parametrize("case", [0, 2])
def test_bf16_losses_and_gradients_track_float32_and_torch_autocast(kernel_path, case):
    cfg, B, T = CONFIGS[case]
    params = random_params(cfg, case)
    tokens, targets = batch(cfg, B, T, case)
    loss, _, grads = bf16_step(params, tokens, targets)
    loss32, _, grads32 = ours_step(params, tokens, targets)
    ref_loss, ref = torch_autocast_step(params, tokens, targets)
    # measured: losses within 2e-5 relative, gradients within 0.7% of float32 and 1.1% of autocast
    # (which also rounds the products' outputs)
    assert abs(loss - loss32) / loss32 < 1e-3
    assert abs(loss - ref_loss) / ref_loss < 1e-3
    assert loss != loss32  # the rounding is really there
    for name in ref:
        assert rel_err(grads[name], grads32[name]) < 0.03, name
        assert rel_err(grads[name], ref[name]) < 0.05, name


def test_bf16_training_tracks_the_float32_run():
    from smallmind.runtime.optim import AdamW

    cfg = preset("tiny", vocab_size=64)
    tokens, targets = batch(cfg, 4, 32, 3)
    curves = {}
    for precision in ("fp32", "bf16"):
        params = init_params(cfg, seed=3)
        ws = TrainWorkspace(cfg, 4, 32, precision=precision)
        grads, opt = params.zeros_like(), AdamW(params)
        losses = []
        for _ in range(40):
            grads.flat.fill(0.0)
            losses.append(forward(params, ws, tokens, targets))
            backward(params, grads, ws)
            opt.step(grads, 3e-3)
        curves[precision] = np.array(losses)
    gap = np.abs(curves["bf16"] - curves["fp32"]) / curves["fp32"]
    assert curves["bf16"][-1] < 0.5 * curves["bf16"][0]
    assert gap.max() < 0.01, gap  # measured: 0.2% at most over the 40 steps


def test_workspace_refuses_an_unknown_precision():
    with pytest.raises(SmallMindError, match="unknown precision 'fp16'"):
        TrainWorkspace(preset("tiny"), 1, 8, precision="fp16")


def test_splitting_the_sequences_over_threads_changes_no_bit():
    from smallmind import kernels

    cfg, B, T = CONFIGS[2]
    params = random_params(cfg, 9)
    tokens, targets = batch(cfg, B, T, 9)
    before = kernels.get_threads()
    try:
        results = []
        for threads in (1, 3):  # one thread; sequences 4 split 1 + 1 + 2
            kernels.set_threads(threads)
            loss, logits, grads = ours_step(params, tokens, targets)
            results.append((loss, logits, grads.flat.copy()))
    finally:
        kernels.set_threads(before)
    (loss1, logits1, grads1), (loss3, logits3, grads3) = results
    assert loss1 == loss3
    np.testing.assert_array_equal(logits1, logits3)
    np.testing.assert_array_equal(grads1, grads3)
