import threading

import numpy as np
import pytest

from smallmind.errors import ContextLengthError, SmallMindError
from smallmind.formats.tokenizer import train_tokenizer
from smallmind.memory import map_large_allocations
from smallmind.models.gpt import init_params, preset
from smallmind.runtime.engine import Delta, Engine, EngineBusy, Failed, Finished, GenerationRequest
from smallmind.runtime.model import as_model

TEXT = "naïve café: 日本語のテキスト, emoji 🙂🚀 and plain words.\n" * 20
WAIT = 30  # seconds: a bound on a hang, not a timing


@pytest.fixture(scope="module")
def model():
    tokenizer = train_tokenizer("bpe", TEXT, 300)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size)
    return as_model((cfg, init_params(cfg, seed=11), tokenizer))


@pytest.fixture
def engine(model):
    e = Engine(model, parallel=3, ctx=64, prefill_chunk=8)
    yield e
    e.close()


class Run:
    """A submitted request's events; `gate`, when given, holds the engine thread inside the
    request's first delivery until it is set."""

    def __init__(self, engine, ids, max_tokens, gate=None, watch=None, **options):
        self.events, self.done, self.gate, self.entered = [], threading.Event(), gate, threading.Event()
        self.watch, self.watched = watch, None   # watched: watch's token count when this one ended
        self.handle = engine.submit(GenerationRequest(list(ids), max_tokens, self.deliver, **options))

    def deliver(self, event):
        self.events.append(event)
        if self.gate is not None and not self.entered.is_set():
            self.entered.set()
            self.gate.wait(WAIT)
        if isinstance(event, (Finished, Failed)):
            if self.watch is not None:
                self.watched = self.watch.tokens
            self.done.set()

    def result(self):
        assert self.done.wait(WAIT)
        return "".join(e.text for e in self.events if isinstance(e, Delta)), self.events[-1]

    @property
    def tokens(self):
        return sum(e.tokens for e in self.events if isinstance(e, Delta))


PROMPTS = ["emoji ", "plain words and café", "日本語", "naïve café: ", "and"]


def test_concurrent_greedy_requests_each_get_the_text_they_get_alone(engine, model):
    runs = [Run(engine, model.tokenize(p), 20, temperature=0.0) for p in PROMPTS]
    for run, prompt in zip(runs, PROMPTS):
        text, end = run.result()
        assert text == "".join(model.generate(prompt, max_new_tokens=20, temperature=0.0))
        assert end == Finished("length", len(model.tokenize(prompt)), 20, end.cached_tokens)


def test_the_same_seed_gives_the_same_text_alongside_other_requests(engine, model):
    ids = model.tokenize("plain words")
    first = Run(engine, ids, 24, seed=7).result()[0]
    together = [Run(engine, ids, 24, seed=7), Run(engine, ids, 24, seed=8), Run(engine, ids, 24, seed=7)]
    texts = [r.result()[0] for r in together]
    assert texts[0] == texts[2] == first and texts[1] != first


def test_a_stop_string_ends_the_text_before_it(engine, model):
    ids = model.tokenize("emoji ")
    full = Run(engine, ids, 30, seed=3).result()[0]
    stop = full[10:12]
    text, end = Run(engine, ids, 30, seed=3, stop=(stop, "never there")).result()
    assert text == full[:full.index(stop)] and end.reason == "stop"


def test_a_request_extending_a_finished_one_reuses_its_cached_prefix(engine, model):
    ids = model.tokenize("naïve café: ")
    logits_ids = list(ids)
    Run(engine, ids, 6, temperature=0.0).result()
    # the greedy continuation, recomputed alone, gives the ids the cache holds
    for _ in range(6):
        logits_ids.append(int(model.logits(logits_ids)[-1].argmax()))
    longer = logits_ids + model.tokenize(" and")
    text, end = Run(engine, longer, 5, temperature=0.0).result()
    assert end.cached_tokens == len(ids) + 6 - 1   # the last generated token was never fed back
    alone = list(longer)
    for _ in range(5):
        alone.append(int(model.logits(alone)[-1].argmax()))
    assert text == model.detokenize(alone[len(longer):])


def test_a_conversation_evicted_from_its_slot_resumes_from_the_prefix_store(model):
    engine = Engine(model, parallel=1, ctx=64, prefill_chunk=8, cache_bytes=1 << 20)
    try:
        ids = model.tokenize("naïve café: 日本語のテキスト, ")   # with 6 tokens, long enough to be kept
        Run(engine, ids, 6, temperature=0.0).result()
        other = model.tokenize("emoji 🙂🚀 and plain words")
        Run(engine, other, 6, temperature=0.0).result()   # another conversation takes the only slot
        history = list(ids)
        for _ in range(6):
            history.append(int(model.logits(history)[-1].argmax()))
        longer = history + model.tokenize(" and")
        text, end = Run(engine, longer, 5, temperature=0.0).result()
        assert end.cached_tokens == len(ids) + 6 - 1   # restored from the store, not recomputed
        alone = list(longer)
        for _ in range(5):
            alone.append(int(model.logits(alone)[-1].argmax()))
        assert text == model.detokenize(alone[len(longer):])
    finally:
        engine.close()


def test_a_request_the_pool_fails_to_place_gets_a_500_and_the_engine_goes_on(model, monkeypatch):
    engine = Engine(model, parallel=1, ctx=64, prefill_chunk=8)
    try:
        acquire, calls = engine.pool.acquire, []

        def failing_once(ids):
            calls.append(ids)
            if len(calls) == 1:
                raise RuntimeError("a fault in the pool")
            return acquire(ids)

        monkeypatch.setattr(engine.pool, "acquire", failing_once)
        ids = model.tokenize("plain words")
        _, end = Run(engine, ids, 4, temperature=0.0).result()
        assert isinstance(end, Failed) and end.status == 500
        text, end = Run(engine, ids, 4, temperature=0.0).result()
        assert isinstance(end, Finished) and text == "".join(model.generate("plain words", max_new_tokens=4,
                                                                             temperature=0.0))
    finally:
        engine.close()


def test_the_engine_refuses_a_prefix_cache_budget_that_is_not_a_byte_count(model):
    for bad in (-1, 1.5, True):
        with pytest.raises(SmallMindError, match="prefix cache"):
            Engine(model, parallel=1, ctx=64, cache_bytes=bad)


def test_a_prompt_with_one_token_left_to_prefill_joins_the_decode_batch(engine, model, monkeypatch):
    ids = model.tokenize("plain words and café")
    alone = Run(engine, ids, 6, temperature=0.0).result()[0]
    forwards = []
    forward = model.net.forward
    monkeypatch.setattr(model.net, "forward", lambda *a, **k: (forwards.append(1), forward(*a, **k))[1])
    again = Run(engine, ids, 6, temperature=0.0)   # the whole prompt but its last token is cached
    assert again.result()[0] == alone
    assert again.events[-1].cached_tokens == len(ids) - 1
    assert forwards == []   # no prefill forward: the last prompt token went through the batch


def test_prompt_prefills_compute_no_logits_and_the_last_token_joins_the_batch(model, monkeypatch):
    engine = Engine(model, parallel=2, ctx=64, prefill_chunk=8)
    wanted = []   # each prefill forward's `logits`
    forward = model.net.forward
    monkeypatch.setattr(model.net, "forward", lambda *a, **k: (wanted.append(k.get("logits", True)), forward(*a, **k))[1])
    try:
        prompt = "plain words and café, naïve café: emoji 🙂🚀"   # more than one chunk of 8
        run = Run(engine, model.tokenize(prompt), 8, temperature=0.0)
        text, end = run.result()
    finally:
        engine.close()
    assert len(wanted) >= 2 and not any(wanted)
    assert text == "".join(model.generate(prompt, max_new_tokens=8, temperature=0.0))
    assert end == Finished("length", len(model.tokenize(prompt)), 8, 0)


def test_logprobs_are_the_log_softmax_of_the_raw_logits(engine, model):
    ids = model.tokenize("plain words")
    run = Run(engine, ids, 5, seed=1, temperature=1.5, top_p=0.9, logprobs=3)
    run.result()
    entries = [t for e in run.events if isinstance(e, Delta) for t in e.logprobs]
    assert len(entries) == 5
    seq = list(ids)
    for entry in entries:
        logits = model.logits(seq)[-1].astype(np.float64)
        logsoftmax = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        token = next(i for i in np.argsort(-logsoftmax) if model.tokenizer.token_bytes(int(i)) == entry.token
                     and abs(logsoftmax[i] - entry.logprob) < 1e-4)
        top = np.argsort(-logsoftmax)[:3]
        assert [b for b, _ in entry.top] == [model.tokenizer.token_bytes(int(i)) for i in top]
        np.testing.assert_allclose([lp for _, lp in entry.top], logsoftmax[top], atol=1e-4)
        seq.append(int(token))


def test_the_events_of_a_step_are_delivered_together_after_all_its_sampling(model):
    engine = Engine(model, parallel=3, ctx=64, prefill_chunk=8)
    log = []   # "step", "sample" and "deliver" in the order the engine thread did them
    step, take = engine._step, engine._take
    submitted = threading.Event()   # the first step waits for all three, so that they batch
    engine._step = lambda: (submitted.wait(WAIT), log.append("step"), step())[2]
    engine._take = lambda *a: (log.append("sample"), take(*a))[1]

    class Logged(Run):
        def deliver(self, event):
            log.append("deliver")
            super().deliver(event)

    try:
        runs = [Logged(engine, model.tokenize(p), 6, temperature=0.0) for p in PROMPTS[:3]]
        submitted.set()
        for run in runs:
            run.result()
    finally:
        engine.close()
    # within a step, every sampling comes before the first delivery
    steps = "".join("|" if e == "step" else e[0] for e in log).split("|")
    assert len(steps) > 5 and all("ds" not in step for step in steps)
    assert sum(step.count("s") >= 2 and "d" in step for step in steps) >= 3   # batches did deliver


def test_a_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding(engine, model):
    gate = threading.Event()
    decoding = Run(engine, model.tokenize("emoji "), 40, gate=gate, temperature=0.0)
    assert decoding.entered.wait(WAIT)   # the engine is inside decoding's first delivery
    long_prompt = list(range(3, 59))     # 56 tokens: 7 steps of 8
    prefilling = Run(engine, long_prompt, 1, watch=decoding, temperature=0.0)
    gate.set()
    prefilling.result()
    decoding.result()
    assert prefilling.watched >= 7   # one decode step of the other request per prefill chunk


def test_a_cancelled_request_frees_its_slot_at_once(model):
    engine = Engine(model, parallel=1, ctx=64, prefill_chunk=8)
    try:
        gate = threading.Event()
        first = Run(engine, model.tokenize("emoji "), 50, gate=gate, temperature=0.0)
        assert first.entered.wait(WAIT)
        waiting = Run(engine, model.tokenize("and"), 3, temperature=0.0)
        first.handle.cancel()
        gate.set()
        text, end = waiting.result()
        assert isinstance(end, Finished) and end.completion_tokens == 3
        assert not any(isinstance(e, Finished) for e in first.events) and first.tokens < 50
    finally:
        engine.close()


def test_the_queue_is_bounded_and_requests_time_out(model):
    engine = Engine(model, parallel=1, ctx=64, queue_size=1)
    try:
        gate = threading.Event()
        first = Run(engine, model.tokenize("emoji "), 5, gate=gate, temperature=0.0)
        assert first.entered.wait(WAIT)
        late = Run(engine, model.tokenize("and"), 3, timeout=0.0)
        with pytest.raises(EngineBusy, match="waiting"):
            Run(engine, model.tokenize("and"), 3)
        gate.set()
        assert first.result()[1].reason == "length"
        end = late.result()[1]
        assert isinstance(end, Failed) and end.status == 408
    finally:
        engine.close()


def test_a_request_that_cannot_fit_the_context_is_refused_before_queueing(engine, model):
    with pytest.raises(ContextLengthError, match="context is 64 tokens"):
        Run(engine, list(range(10)), 55)


def resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_the_kv_pool_is_committed_at_start_not_by_the_first_requests():
    tokenizer = train_tokenizer("bpe", TEXT, 300)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size, context_length=4096)
    model = as_model((cfg, init_params(cfg, seed=1), tokenizer))
    # the pool must come from fresh pages: after earlier tests freed large arrays, glibc's moving
    # threshold would serve it from heap memory that is already resident (smallmind.load fixes
    # the threshold the same way)
    map_large_allocations()
    before = resident_bytes()
    engine = Engine(model, parallel=8, ctx=4096)
    try:
        assert resident_bytes() - before >= 0.9 * engine.pool.nbytes   # 64 MB, all paged in
    finally:
        engine.close()
