"""The serving engine: one thread owns the model and runs every request in a continuous batch.

    engine = Engine(model, parallel=8, ctx=2048)
    handle = engine.submit(GenerationRequest(prompt_ids, max_tokens=64, deliver=callback))
    ...                                 # callback(Delta | Finished | Failed) from the engine thread
    handle.cancel()                     # the client went away: the slot is freed on the next step

Requests wait in a bounded queue (EngineBusy when it is full). Each step of the loop:
  1. drops cancelled and timed-out requests (their slots are free at once);
  2. admits waiting requests into free KV slots (runtime/kv_pool.py: a prompt that extends a
     cached sequence keeps that prefix, from a slot or from the prefix store of `cache_bytes`);
  3. prefills at most `prefill_chunk` prompt tokens in all, so a long prompt is spread over
     several steps and never stalls the sequences already decoding. A prompt's last token is
     never prefilled: it joins the decode batch, whose one LM head serves every row, so the
     prefill forwards skip the LM head (for Gemma 3, the larger part of a short prompt's
     forward), and a prompt with one token left (the usual case after prefix reuse) needs
     no forward of its own;
  4. runs one batched decode step for every sequence that has a token to feed
     (runtime/batch_decode.py), then samples each row with the request's own sampler, seed,
     stop strings, max_tokens and logprobs.
Text reaches the request's callback as soon as it is complete (byte-exact UTF-8, stop strings
held back until they cannot be one), exactly as runtime/generate.py streams it. The events of
a step are delivered together at its end, and then `after_step` is called: a face that wakes
another thread or process per event wakes it once per step, not once per token per stream
(runtime/engine_process.py, which `smallmind serve` runs, sends each step's events to the HTTP
server's process in one message).
"""

import collections
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ContextLengthError, SmallMindError
from .batch_decode import BatchDecoder
from .generate import Detokenizer, StopGuard, stop_strings
from .kv_pool import KVPool
from .sampler import Sampler, largest

DEFAULT_PREFILL_CHUNK = 64
DEFAULT_QUEUE_SIZE = 64
DEFAULT_TIMEOUT = 600.0


class EngineBusy(SmallMindError):
    """The request queue is full: try again later."""


class EngineStopped(SmallMindError):
    """The engine has stopped (closed, or its process ended): it takes no more requests."""


@dataclass
class GenerationRequest:
    """One completion: prompt ids in, events out through `deliver` (called on the engine thread)."""
    prompt_ids: list[int]
    max_tokens: int
    deliver: Callable[[object], None]
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None        # None: no logprobs; k >= 0: the chosen token's and the top k
    timeout: float = DEFAULT_TIMEOUT   # seconds from submission to the last token


@dataclass
class TokenLogprob:
    """A generated token's bytes and log-probability, and the `top` most likely alternatives."""
    token: bytes
    logprob: float
    top: list[tuple[bytes, float]]


@dataclass
class Delta:
    text: str
    tokens: int                  # tokens generated since the previous Delta
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Finished:
    reason: str                  # "stop" (end of generation or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int           # prompt tokens whose KV came from an earlier request


@dataclass
class Failed:
    status: int                  # an HTTP status for the face: 408 timeout, 500 an engine fault
    message: str


class Handle:
    """The submitter's side of a request: cancel() frees its slot on the engine's next step."""

    def __init__(self, engine: "Engine"):
        self._engine = engine
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._engine._wake_up()


class _Sequence:
    """A request inside the engine: its slot, sampler and streaming state."""

    def __init__(self, request: GenerationRequest, handle: Handle, vocab: int, tokenizer):
        self.request = request
        self.handle = handle
        self.deadline = time.monotonic() + request.timeout
        self.sampler = Sampler(vocab, temperature=request.temperature, top_p=request.top_p, seed=request.seed)
        self.detokenizer = Detokenizer(tokenizer)
        self.guard = StopGuard(request.stop)
        self.slot = -1
        self.session = None
        self.prompt = np.asarray(request.prompt_ids, np.int32)
        self.prefilled = 0           # prompt ids in the cache (kept or prefilled)
        self.cached = 0
        self.generated = 0
        self.unsent = 0              # tokens generated whose text is not delivered yet
        self.next_token = -1         # the sampled token to feed next step (-1: none yet)
        self.logprobs: list[TokenLogprob] = []
        wants = request.logprobs is not None
        self.logprob_buffer = np.empty(vocab, np.float64) if wants else None   # made once per request
        self.exp_buffer = np.empty(vocab, np.float64) if wants else None


class Engine:
    """Runs requests on `model` (a runtime.model.Model) with up to `parallel` sequences at once,
    each of at most `ctx` positions, from one background thread; finished sequences evicted from
    their slots stay reusable in a prefix store of `cache_bytes`."""

    def __init__(self, model, *, parallel: int = 4, ctx: int | None = None,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, queue_size: int = DEFAULT_QUEUE_SIZE,
                 cache_bytes: int = 0, after_step: Callable[[], None] | None = None):
        ctx = model.default_ctx if ctx is None else ctx
        if isinstance(ctx, bool) or not isinstance(ctx, int) or not 1 <= ctx <= model.context_length:
            raise ContextLengthError(f"--ctx must be 1..{model.context_length} (the model's context), got {ctx!r}")
        if not 1 <= parallel <= ctx:
            raise SmallMindError(f"--parallel must be 1..{ctx} (the context), got {parallel}")
        if prefill_chunk < 1 or queue_size < 1:
            raise SmallMindError("the prefill chunk and the queue size must be positive")
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise SmallMindError(f"the prefix cache's budget must be a whole number of bytes >= 0, "
                                 f"got {cache_bytes!r}")
        self.model = model
        self.ctx = ctx
        self.parallel = parallel
        self.prefill_chunk = min(prefill_chunk, ctx)
        self.queue_size = queue_size
        net = model.net
        self.pool = KVPool(net, parallel, ctx, net.workspace(self.prefill_chunk), cache_bytes)
        # The pool's zeros are mapped lazily: the first write to a slot would fault in and clear
        # its pages in the middle of a request (seconds for 8 slots of a 4096-position Gemma
        # cache). Commit them now, as llama.cpp clears its KV cache at start.
        self.pool.k.fill(0)
        self.pool.v.fill(0)
        self.decoder = BatchDecoder(net, parallel)
        self.eog = model.tokenizer.eog_ids
        self.waiting: collections.deque = collections.deque()
        self.active: list[_Sequence] = []
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.stopping = False
        self.generated_total = 0   # tokens sampled since start, cancelled requests' included
        self.outgoing: list = []   # (request, event) of this step, delivered at its end
        self.after_step = after_step   # called on the engine thread once a step's events are delivered
        self.thread = threading.Thread(target=self._run, name="smallmind-engine", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------------------------
    # the submitter's side (any thread)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active_sequences(self) -> int:
        return len(self.active)

    @property
    def cache_bytes(self) -> int:
        """Bytes the prefix store holds (read without the lock: a scrape's snapshot)."""
        return self.pool.store.nbytes if self.pool.store is not None else 0

    @property
    def pool_bytes(self) -> int:
        """Bytes of the KV slots, allocated at start."""
        return self.pool.nbytes

    @property
    def alive(self) -> bool:
        return not self.stopping and self.thread.is_alive()

    def check(self, prompt_ids, max_tokens: int) -> None:
        """Raise the error a request of this prompt and max_tokens would meet, before queueing it."""
        check_request(prompt_ids, max_tokens, self.model.vocab_size, self.ctx)

    def submit(self, request: GenerationRequest) -> Handle:
        check_request(request.prompt_ids, request.max_tokens, self.model.vocab_size, self.ctx)
        request.stop = stop_strings(request.stop)
        handle = Handle(self)
        sequence = _Sequence(request, handle, self.model.vocab_size, self.model.tokenizer)
        with self.lock:
            if self.stopping:
                raise EngineStopped("the engine has stopped")
            if len(self.waiting) >= self.queue_size:
                raise EngineBusy(f"{len(self.waiting)} requests are already waiting: try again shortly")
            self.waiting.append(sequence)
            self.wake.notify()
        return handle

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.wake.notify()
        self.thread.join()

    def _wake_up(self) -> None:
        with self.lock:
            self.wake.notify()

    # ------------------------------------------------------------------------------------------
    # the engine thread

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.stopping and not self.active and not self.waiting:
                    self.wake.wait()
                if self.stopping:
                    break
            try:
                self._step()
            except Exception:  # a fault in the engine must fail its requests, not hang them
                traceback.print_exc(file=sys.stderr)
                for sequence in list(self.active):
                    sequence.session.reset()   # its cache may be half written
                    self._end(sequence, Failed(500, "the engine failed on this request"))
            finally:
                self._deliver_step()
        for sequence in list(self.active) + list(self.waiting):
            sequence.request.deliver(Failed(503, "the server is shutting down"))
        if self.after_step is not None:
            self.after_step()

    def _step(self) -> None:
        now = time.monotonic()
        for sequence in list(self.active):
            if sequence.handle.cancelled:
                self._end(sequence, None)
            elif now > sequence.deadline:
                self._end(sequence, Failed(408, f"the request took longer than its {sequence.request.timeout:g} s"))
        with self.lock:
            waiting = list(self.waiting)
        for sequence in waiting:
            if sequence.handle.cancelled:
                self._unqueue(sequence)
            elif now > sequence.deadline:
                self._unqueue(sequence)
                self._send(sequence.request, Failed(408, "the request timed out waiting for a free slot"))
            elif self.pool.free:
                self._unqueue(sequence)
                self._admit(sequence)
        self._prefill()
        self._decode()

    def _send(self, request: GenerationRequest, event) -> None:
        self.outgoing.append((request, event))

    def _deliver_step(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        for request, event in outgoing:
            request.deliver(event)
        if self.after_step is not None:
            self.after_step()

    def _unqueue(self, sequence: _Sequence) -> None:
        with self.lock:
            self.waiting.remove(sequence)

    def _admit(self, sequence: _Sequence) -> None:
        try:
            sequence.slot, kept = self.pool.acquire(sequence.prompt)
        except Exception:   # taken off the queue and not yet active: answer it here, or it waits forever
            traceback.print_exc(file=sys.stderr)
            self._send(sequence.request, Failed(500, "the engine could not give this request a KV slot"))
            return
        sequence.session = self.pool.sessions[sequence.slot]
        sequence.prefilled = sequence.cached = kept
        self.active.append(sequence)

    def _prefill(self) -> None:
        # every prompt token but the last, without logits; the last to the decode batch
        budget = self.prefill_chunk
        for sequence in list(self.active):
            remaining = sequence.prompt.shape[0] - sequence.prefilled
            if remaining == 0:
                continue
            if remaining > 1 and budget > 0:
                n = min(remaining - 1, budget)
                sequence.session.prefill(sequence.prompt[sequence.prefilled:sequence.prefilled + n], logits=False)
                sequence.prefilled += n
                budget -= n
                remaining -= n
            if remaining == 1:
                sequence.next_token = int(sequence.prompt[-1])
                sequence.prefilled += 1

    def _decode(self) -> None:
        rows = [s for s in self.active if s.next_token >= 0]
        if not rows:
            return
        logits = self.decoder.step([s.session for s in rows], [s.next_token for s in rows])
        for b, sequence in enumerate(rows):
            self._take(sequence, logits[b])

    def _take(self, sequence: _Sequence, logits: np.ndarray) -> None:
        # logits (V,) after the sequence's last position: sample, stream, and finish or continue
        request = sequence.request
        token = sequence.sampler.sample(logits)
        sequence.next_token = -1
        if token in self.eog:
            self._finish(sequence, "stop")
            return
        sequence.generated += 1
        self.generated_total += 1
        if sequence.logprob_buffer is not None:
            sequence.logprobs.append(self._logprob(sequence, logits, token))
        sequence.unsent += 1
        text = sequence.guard.push(sequence.detokenizer.push(token))
        if text:
            self._send(request, Delta(text, sequence.unsent, sequence.logprobs))
            sequence.logprobs = []
            sequence.unsent = 0
        if sequence.guard.stopped:
            self._finish(sequence, "stop")
        elif sequence.generated == request.max_tokens:
            self._finish(sequence, "length")
        else:
            sequence.next_token = token

    def _logprob(self, sequence: _Sequence, logits: np.ndarray, token: int) -> TokenLogprob:
        # log-softmax of the raw logits (temperature 1, before any filtering), as OpenAI reports it
        lp, exp = sequence.logprob_buffer, sequence.exp_buffer
        lp[...] = logits
        lp -= lp.max()
        np.exp(lp, out=exp)
        lp -= np.log(exp.sum())
        k = sequence.request.logprobs
        token_bytes = self.model.tokenizer.token_bytes
        top = []
        if k > 0:
            best = largest(lp, min(k, lp.shape[0]))
            best = best[np.argsort(-lp[best], kind="stable")]
            top = [(token_bytes(int(i)), float(lp[i])) for i in best]
        return TokenLogprob(token_bytes(token), float(lp[token]), top)

    def _finish(self, sequence: _Sequence, reason: str) -> None:
        guard, text = sequence.guard, ""
        if not guard.stopped:   # the held-back tail, unless a stop string already ended the text
            text = guard.push(sequence.detokenizer.flush())
            if not guard.stopped:
                text += guard.flush()
        if text or sequence.unsent:
            self._send(sequence.request, Delta(text, sequence.unsent, sequence.logprobs))
            sequence.logprobs = []
            sequence.unsent = 0
        prompt = int(sequence.prompt.shape[0])
        self._end(sequence, Finished(reason, prompt, sequence.generated, sequence.cached))

    def _end(self, sequence: _Sequence, event) -> None:
        self.active.remove(sequence)
        self.pool.release(sequence.slot)
        if event is not None:
            self._send(sequence.request, event)


def check_request(prompt_ids, max_tokens, vocab: int, ctx: int) -> None:
    """Raise the error a request of this prompt and max_tokens meets on an engine of a `vocab`
    model with slots of `ctx` positions."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise SmallMindError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if len(prompt_ids) == 0:
        raise SmallMindError("the prompt is empty: give at least one token")
    for i in prompt_ids:
        if not 0 <= i < vocab:
            raise SmallMindError(f"token id {i} is outside the model's vocabulary of {vocab}")
    if len(prompt_ids) + max_tokens > ctx:
        raise ContextLengthError(
            f"this model's context is {ctx} tokens; the prompt is {len(prompt_ids)} tokens and "
            f"max_tokens is {max_tokens}: shorten the prompt or lower max_tokens")
