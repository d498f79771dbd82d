import json
from types import SimpleNamespace

import numpy as np
import pytest

from smallmind import kernels
from smallmind.bench import inference
from smallmind.bench.inference import bench_decode, bench_prefill, decode_allocations, largest_matmul_gflops
from smallmind.cli import main
from smallmind.errors import ContextLengthError, SmallMindError
from smallmind.models.gpt import GPT, init_params, preset
from smallmind.runtime.session import Session
from smallmind.runtime.sampler import Sampler


class Clock:
    """A scripted perf_counter: time moves only when the code under test says so."""

    def __init__(self):
        self.now = 0.0

    def module(self):
        return SimpleNamespace(perf_counter=lambda: self.now)


def test_bench_decode_reports_the_median_of_the_runs_after_the_warm_up(monkeypatch):
    seconds = iter([9.0, 0.1, 0.5, 0.2])  # warm-up, then three measured runs: median 0.2 s
    monkeypatch.setattr(inference, "decode_seconds", lambda *a: next(seconds))
    r = bench_decode("tiny", threads=1, repeats=3, prompt_tokens=8, new_tokens=10)
    assert next(seconds, None) is None
    assert r["tok_s"] == pytest.approx(10 / 0.2) and r["ms_per_token"] == pytest.approx(20.0)
    assert r["alloc_bytes_per_token"] >= 0 and r["gc_collections"] == 0
    assert r["kernel_path"] == kernels.path and r["threads"] == 1
    assert (r["prompt_tokens"], r["new_tokens"]) == (8, 10)


class ScriptedSession:
    """A session whose prefill and decode steps take scripted time on `clock`."""

    def __init__(self, clock, prefill_seconds, vocab=512):
        self.clock, self.prefill_seconds, self.vocab = clock, prefill_seconds, vocab

    def reset(self):
        pass

    def prefill(self, ids):
        self.clock.now += next(self.prefill_seconds)
        return np.zeros(self.vocab, np.float32)

    def step(self, token):
        self.clock.now += 1.0  # a decode step takes 1 s
        return np.zeros(self.vocab, np.float32)


def test_decode_time_counts_the_decode_steps_and_not_the_prefill(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(inference, "time", clock.module())
    session = ScriptedSession(clock, iter([100.0]))
    assert inference.decode_seconds(session, Sampler(512, temperature=0.0), np.arange(8, dtype=np.int32), 5) == 5.0


def test_bench_prefill_reports_the_median_forward_after_the_warm_up(monkeypatch):
    clock, seconds = Clock(), iter([50.0, 1.0, 3.0, 2.0])
    monkeypatch.setattr(inference, "time", clock.module())
    monkeypatch.setattr(inference, "Session", lambda net, ctx, prefill_chunk: ScriptedSession(clock, seconds))
    monkeypatch.setattr(inference, "largest_matmul_gflops", lambda params, tokens: 1.0)
    r = bench_prefill("tiny", threads=1, repeats=3, tokens=16)
    assert next(seconds, None) is None
    assert r["ms_total"] == pytest.approx(2000.0) and r["tok_s"] == pytest.approx(8.0)
    assert r["ms_per_token"] == pytest.approx(125.0) and r["tokens"] == 16


def test_a_benchmark_longer_than_the_context_is_refused():
    with pytest.raises(ContextLengthError, match="context of 64"):
        bench_decode("tiny", repeats=1, prompt_tokens=32, new_tokens=50)


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"new_tokens": -1}, {"prompt_tokens": 0}])
def test_nonsense_benchmark_sizes_are_refused(kwargs):
    with pytest.raises(SmallMindError, match=next(iter(kwargs))):
        bench_decode("tiny", **kwargs)


def test_allocation_figure_counts_what_a_step_allocates():
    # a sampler that keeps 4 KB and makes 8 KB of garbage per step has 12 KB allocated at once,
    # and the 4 KB it keeps lie under whatever the forward allocates after it
    class AllocatingSampler(Sampler):
        kept = []

        def sample(self, logits):
            self.kept.append(np.ones(1024, dtype=np.float32))
            np.ones(2048, dtype=np.float32)
            return super().sample(logits)

    cfg = preset("tiny")
    params = init_params(cfg)
    session = Session(GPT(params), 19, prefill_chunk=8)
    prompt = np.arange(8, dtype=np.int32)
    plain = decode_allocations(session, Sampler(cfg.vocab_size, temperature=0.0), prompt, 10)
    heavy = decode_allocations(session, AllocatingSampler(cfg.vocab_size, temperature=0.0), prompt, 10)
    assert heavy["net_growth"] >= 10 * 4096
    assert heavy["bytes_per_token"] >= 12 * 1024
    assert heavy["bytes_per_token"] - plain["bytes_per_token"] >= 3 * 1024  # small temporaries may overlap


def test_matmul_gflops_times_the_largest_weight(monkeypatch):
    clock, shapes = Clock(), []

    def linear(x, w, b, out, accumulate=False):
        clock.now += 0.0625  # every product takes 1/16 s
        shapes.append((x.shape, w.shape, out.shape))
        return out

    monkeypatch.setattr(inference, "time", clock.module())
    monkeypatch.setattr(kernels, "linear", linear)
    C = preset("tiny").d_model
    gflops = largest_matmul_gflops(init_params(preset("tiny")), 16, min_seconds=0.25)
    assert shapes == [((16, C), (4 * C, C), (16, 4 * C))] * 5  # a warm-up, then 4 timed calls fill 0.25 s
    assert gflops == pytest.approx(2 * 16 * 4 * C * C * 4 / 0.25 / 1e9)


def test_bench_cli_prints_decode_figures_as_json(capsys):
    assert main(["bench", "decode", "--preset", "seed", "--repeats", "1", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["prompt_tokens"], result["new_tokens"]) == (32, 50)
    assert result["tok_s"] > 0 and result["gc_collections"] == 0
