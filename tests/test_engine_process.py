import os
import signal
import threading
import time

import numpy as np
import pytest

from smallmind.errors import ContextLengthError, SmallMindError
from smallmind.runtime.engine import Delta, Engine, EngineBusy, EngineStopped, Failed, Finished, GenerationRequest
from smallmind.runtime.engine_process import EngineProcess
from smallmind.runtime.model import load

WAIT = 60  # seconds: a bound on a hang, not a timing
PROMPTS = ["emoji ", "plain words and café", "日本語", "naïve café: ", "and"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from server_process import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("engine_process") / "model", context_length=4096)


@pytest.fixture
def remote(checkpoint):
    engine = EngineProcess(checkpoint, threads=1, parallel=2, ctx=256, queue_size=3)
    yield engine
    engine.close()


class Run:
    """A submitted request's events, as the engine delivers them."""

    def __init__(self, engine, ids, max_tokens, **options):
        self.events, self.done = [], threading.Event()
        self.handle = engine.submit(GenerationRequest(list(ids), max_tokens, self.deliver, **options))

    def deliver(self, event):
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.done.set()

    def result(self):
        assert self.done.wait(WAIT)
        deltas = [e for e in self.events if isinstance(e, Delta)]
        return "".join(e.text for e in deltas), [lp for e in deltas for lp in e.logprobs], self.events[-1]


def runs_of(engine, model, **options):
    runs = [Run(engine, model.tokenize(p), 12, temperature=0.0, **options) for p in PROMPTS]
    return [r.result() for r in runs]


def test_the_engine_process_answers_as_the_engine_does_in_this_process(checkpoint, remote):
    # greedy text, the end, the token counts and logprobs, five requests through two slots
    model = load(checkpoint)
    local = Engine(model, parallel=2, ctx=256)
    try:
        expected = runs_of(local, model, logprobs=2)
    finally:
        local.close()
    got = runs_of(remote, remote.model, logprobs=2)
    # the text and the ends exactly; the log-probabilities to float32 rounding, as a row's sums
    # depend on the batch it was decoded in, which depends on when the requests arrived
    assert [(text, end) for text, _, end in got] == [(text, end) for text, _, end in expected]
    for (_, lps, _), (_, want, _) in zip(got, expected):
        assert [(t.token, [b for b, _ in t.top]) for t in lps] == [(t.token, [b for b, _ in t.top]) for t in want]
        assert np.allclose([t.logprob for t in lps], [t.logprob for t in want], rtol=0, atol=1e-4)
        assert np.allclose([lp for t in lps for _, lp in t.top], [lp for t in want for _, lp in t.top],
                           rtol=0, atol=1e-4)
    assert all(isinstance(end, Finished) and end.completion_tokens > 0 for _, _, end in got)
    assert all(len(lps) > 0 and len(lps[0].top) == 2 for _, lps, _ in got)
    assert (remote.model.vocab_size, remote.model.context_length, remote.model.name) == \
        (model.vocab_size, model.context_length, model.name)
    assert remote.generated_total == sum(end.completion_tokens for _, _, end in got)


def test_a_bad_request_is_refused_at_submit(remote):
    with pytest.raises(ContextLengthError, match="context is 256 tokens"):
        Run(remote, [1] * 250, 10)
    with pytest.raises(SmallMindError, match="outside the model's vocabulary"):
        Run(remote, [remote.model.vocab_size], 4)
    with pytest.raises(SmallMindError, match="max_tokens must be a positive integer"):
        Run(remote, [1], 0)
    _, _, end = Run(remote, [1, 2], 3, temperature=0.0).result()   # and the next good one runs
    assert isinstance(end, Finished) and end.completion_tokens == 3


def test_a_full_queue_raises_engine_busy_and_a_cancel_makes_room(remote):
    long = [Run(remote, [1, 2], 250) for _ in range(5)]   # two slots, three waiting
    with pytest.raises(EngineBusy):
        Run(remote, [1, 2], 4)
    for run in long:
        run.handle.cancel()
    _, _, end = Run(remote, [1, 2], 4, temperature=0.0).result()
    assert isinstance(end, Finished) and end.completion_tokens == 4
    deadline = time.monotonic() + WAIT
    while remote.active_sequences or remote.queue_depth:   # the counters come with the child's steps
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_close_ends_the_running_requests_with_503(checkpoint):
    engine = EngineProcess(checkpoint, threads=1, parallel=1, ctx=4096)
    running = Run(engine, [1, 2], 4000)
    engine.close()
    _, _, end = running.result()
    assert isinstance(end, Failed) and end.status == 503
    assert engine.process.returncode == 0
    with pytest.raises(EngineStopped):
        Run(engine, [1, 2], 4)


def test_a_killed_engine_process_fails_its_requests_and_refuses_new_ones(checkpoint):
    stopped = []
    engine = EngineProcess(checkpoint, threads=1, parallel=1, ctx=4096, on_exit=stopped.append)
    try:
        running = Run(engine, [1, 2], 4000)
        waiting = Run(engine, [1, 2], 4000)
        os.kill(engine.process.pid, signal.SIGKILL)
        for run in (running, waiting):
            _, _, end = run.result()
            assert isinstance(end, Failed) and end.status == 500 and "exit code -9" in end.message
        assert stopped == ["the engine process stopped (exit code -9)"]
        assert not engine.alive
        with pytest.raises(EngineStopped, match="exit code -9"):
            Run(engine, [1, 2], 4)
    finally:
        engine.close()


def test_a_path_that_names_no_model_is_refused_before_a_process_starts(tmp_path):
    with pytest.raises(SmallMindError, match="no model at"):
        EngineProcess(tmp_path / "missing.gguf")


def test_an_engine_that_cannot_start_says_why_and_leaves_no_process(checkpoint):
    before = set(os.listdir("/proc"))
    with pytest.raises(SmallMindError, match=r"--parallel must be 1\.\.8"):
        EngineProcess(checkpoint, threads=1, parallel=9, ctx=8)
    children = [p for p in set(os.listdir("/proc")) - before if p.isdigit()]
    for pid in children:   # a child that outlived the refusal would still be our child
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[1]) != os.getpid()
        except FileNotFoundError:
            pass
