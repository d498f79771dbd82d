import numpy as np
import pytest

from smallmind.errors import ContextLengthError, SmallMindError
from smallmind.models.gpt import GPT, init_params, preset
from smallmind.runtime.sampler import Sampler
from smallmind.runtime.session import Session, sample_tokens


@pytest.fixture(scope="module")
def net():
    return GPT(init_params(preset("tiny"), seed=3))


def ids(n, seed=0, vocab=512):
    return np.random.default_rng(seed).integers(0, vocab, n, dtype=np.int32)


def test_prefill_in_workspace_sized_chunks_equals_one_prefill(net):
    tokens = ids(40)
    whole = Session(net, 64, prefill_chunk=64)
    chunked = Session(net, 64, prefill_chunk=7)
    a = whole.prefill(tokens).copy()
    b = chunked.prefill(tokens).copy()
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert chunked.length == whole.length == 40
    np.testing.assert_array_equal(chunked.ids[:40], tokens)


def test_prefill_computes_the_logits_of_its_last_chunk_only(net):
    from smallmind.profiler.recorder import Recorder, recording

    tokens = ids(40, seed=6)
    s = Session(net, 64, prefill_chunk=7)
    recorder = Recorder()
    with recording(recorder):
        logits = s.prefill(tokens).copy()
        assert s.prefill(ids(5, seed=7), logits=False) is None
    heads = sum(node.calls for node in recorder.nodes() if node.name == "matmul.lm_head")
    assert heads == 1   # 6 chunks of the 40, then 1 of the 5: only the 40's last chunk wanted them
    np.testing.assert_allclose(logits, Session(net, 64).prefill(tokens), rtol=1e-5, atol=1e-5)
    assert s.length == 45


def test_a_prefill_without_logits_then_a_step_equals_one_prefill(net):
    tokens = ids(17, seed=8)
    s = Session(net, 32, prefill_chunk=5)
    s.prefill(tokens[:-1], logits=False)
    np.testing.assert_allclose(s.step(int(tokens[-1])), Session(net, 32).prefill(tokens), rtol=1e-5, atol=1e-5)


def test_steps_give_the_logits_of_the_whole_sequence(net):
    tokens = ids(20, seed=1)
    s = Session(net, 32, prefill_chunk=8)
    s.prefill(tokens[:8])
    rows = [s.step(int(t)).copy() for t in tokens[8:]]
    every = Session(net, 32).all_logits(tokens)
    np.testing.assert_allclose(np.stack(rows), every[8:], rtol=1e-4, atol=1e-4)
    assert s.length == 20


def test_all_logits_over_several_chunks_match_one_chunk(net):
    tokens = ids(30, seed=2)
    np.testing.assert_allclose(Session(net, 30, prefill_chunk=4).all_logits(tokens),
                               Session(net, 30, prefill_chunk=30).all_logits(tokens), rtol=1e-4, atol=1e-4)


def test_reuse_prefix_keeps_the_shared_positions_and_leaves_one_to_prefill(net):
    first, second = ids(12, seed=3), ids(20, seed=4)
    second[:9] = first[:9]
    s = Session(net, 64)
    s.prefill(first)
    assert s.reuse_prefix(second) == 9
    logits = s.prefill(second[9:]).copy()
    np.testing.assert_allclose(logits, Session(net, 64).prefill(second), rtol=1e-4, atol=1e-4)
    assert s.reuse_prefix(second) == 19  # all cached: the last id is prefilled again for its logits


def test_rewind_forgets_positions_and_refuses_to_go_forward(net):
    s = Session(net, 16)
    s.prefill(ids(10))
    s.rewind(4)
    assert s.length == 4
    with pytest.raises(SmallMindError, match="rewind"):
        s.rewind(5)


def test_a_full_context_refuses_more_tokens(net):
    s = Session(net, 8)
    s.prefill(ids(8))
    with pytest.raises(ContextLengthError, match="full"):
        s.step(1)
    s.reset()
    with pytest.raises(ContextLengthError, match="do not fit"):
        s.prefill(ids(9))


@pytest.mark.parametrize("bad", [[], [-1], [512], [[1, 2]]])
def test_bad_token_ids_are_refused_before_the_forward(net, bad):
    with pytest.raises(SmallMindError):
        Session(net, 8).prefill(np.array(bad, dtype=np.int64))


@pytest.mark.parametrize("ctx", [0, 65, 2.5, True])
def test_a_context_outside_the_model_is_refused(net, ctx):
    with pytest.raises(ContextLengthError):
        Session(net, ctx)


def test_sample_tokens_stops_at_a_stop_id_and_yields_it(net):
    s = Session(net, 64)
    greedy = list(sample_tokens(s, ids(5), Sampler(512, temperature=0.0), 20))
    assert len(greedy) == 20
    stop = greedy[6]
    s.reset()
    stopped = list(sample_tokens(s, ids(5), Sampler(512, temperature=0.0), 20, frozenset({stop})))
    assert stopped == greedy[:greedy.index(stop) + 1]
