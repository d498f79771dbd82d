import json

import numpy as np
import pytest

from smallmind import kernels
from smallmind.bench.inference import bench_decode, bench_prefill, decode_allocations, largest_matmul_gflops
from smallmind.cli import main
from smallmind.errors import ContextLengthError, SmallMindError
from smallmind.models.gpt import GPT, init_params, preset
from smallmind.runtime.session import Session
from smallmind.runtime.sampler import Sampler


def test_bench_decode_reports_every_figure():
    r = bench_decode("tiny", threads=1, repeats=1, prompt_tokens=8, new_tokens=10)
    assert r["tok_s"] > 0 and r["ms_per_token"] > 0
    assert r["tok_s"] == pytest.approx(1e3 / r["ms_per_token"], rel=1e-2)
    assert r["alloc_bytes_per_token"] >= 0 and r["gc_collections"] == 0
    assert r["matmul_gflops"] > 0
    assert r["kernel_path"] == kernels.path and r["threads"] == 1
    assert (r["prompt_tokens"], r["new_tokens"]) == (8, 10)


def test_bench_prefill_reports_every_figure():
    r = bench_prefill("tiny", threads=1, repeats=1, tokens=16)
    assert r["tok_s"] > 0 and r["ms_total"] == pytest.approx(16 * r["ms_per_token"], rel=1e-2)
    assert r["matmul_gflops"] > 0 and r["kernel_path"] == kernels.path and r["tokens"] == 16


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


def test_matmul_gflops_times_the_largest_weight():
    params = init_params(preset("tiny"))
    assert largest_matmul_gflops(params, 16, min_seconds=0.01) > 0.1


def test_bench_cli_prints_decode_figures_as_json(capsys):
    assert main(["bench", "decode", "--preset", "seed", "--repeats", "1", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["prompt_tokens"], result["new_tokens"]) == (32, 50)
    assert result["tok_s"] > 0 and result["gc_collections"] == 0
