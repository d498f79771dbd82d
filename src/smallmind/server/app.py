"""The HTTP face: an OpenAI-compatible API over a runtime Engine.

    app = create_app(engine, model_id="SmolLM2-135M-Instruct", api_key=None)

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (streamed as
server-sent events with "stream": true), GET /health, GET /metrics (Prometheus text) and the
OpenAPI document at /openapi.json. `engine` is a runtime Engine or, as `smallmind serve` runs
it, an EngineProcess (runtime/engine_process.py: the same face, the model in a process of its
own). Every request becomes an engine GenerationRequest whose events come back from the
engine's thread through one Outbox per event loop (one wake-up of the loop for all the events
of a decode step, not one per token per stream); a client that disconnects cancels its request,
which frees its KV slot on the engine's next step.
"""

import asyncio
import collections
import itertools
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from ..errors import ContextLengthError, SmallMindError
from ..runtime.engine import Delta, EngineBusy, EngineStopped, Finished, GenerationRequest
from . import errors
from .auth import BearerAuth
from .errors import APIError
from .metrics import Metrics
from .schemas import (ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest,
                      ErrorResponse, Health, ModelList)
from .streaming import DONE, event

DEFAULT_COMPLETION_TOKENS = 16   # OpenAI's default max_tokens for /v1/completions
DISCONNECT_POLL = 0.25           # seconds between checks that a non-streaming client is still there
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 429, 503)}
STREAMED = {200: {"content": {"text/event-stream": {}}, "description": "the response, or its chunks when streamed"}}


class Outbox:
    """Events from the engine thread to the jobs of one event loop. Waking the loop costs a
    write to its self-pipe and a hand-over of the GIL, which the engine thread then waits to
    get back: a wake-up is scheduled only when none is pending, so one decode step of many
    streams wakes the loop about once."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.events: list = []        # (job, event) pairs posted since the last drain, in order
        self.scheduled = False

    def post(self, job: "Job", event) -> None:
        # engine thread
        with self.lock:
            self.events.append((job, event))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # event loop
        with self.lock:
            events, self.events = self.events, []
            self.scheduled = False
        for job, event in events:
            job.put(event)


class Job:
    """One request in the engine, seen from the event loop: an async stream of its events."""

    def __init__(self, engine, request: GenerationRequest, outbox: Outbox):
        self.ended = False            # its Finished or Failed has been taken
        self.pending: collections.deque = collections.deque()   # events not yet taken, in order
        self.arrived = asyncio.Event()
        self.started = self.checked = time.monotonic()
        request.deliver = lambda e: outbox.post(self, e)
        try:
            self.handle = engine.submit(request)
        except EngineBusy as e:
            raise APIError(429, str(e), code="queue_full") from None
        except EngineStopped as e:
            raise APIError(503, str(e), code="engine_stopped") from None
        except ContextLengthError as e:
            raise APIError(400, str(e), code="context_length_exceeded") from None
        except SmallMindError as e:
            raise APIError(400, str(e)) from None

    async def _check_client(self, request: Request) -> None:
        # a client that is gone raises CancelledError, at most once per poll period
        now = time.monotonic()
        if now - self.checked < DISCONNECT_POLL:
            return
        self.checked = now
        if await request.is_disconnected():
            raise asyncio.CancelledError

    def put(self, e) -> None:
        self.pending.append(e)
        self.arrived.set()

    async def next(self, request: Request | None):
        """The next event, with the deltas already waiting behind it merged in (under load a
        stream then sends fewer, longer chunks instead of falling behind); with `request`,
        CancelledError when its client has gone."""
        while not self.pending:
            self.arrived.clear()
            if request is None:
                await self.arrived.wait()
                continue
            try:
                await asyncio.wait_for(self.arrived.wait(), DISCONNECT_POLL)
            except TimeoutError:
                pass
            await self._check_client(request)
        if request is not None:
            await self._check_client(request)   # deltas may arrive faster than the poll period
        first = self.pending.popleft()
        self.ended = not isinstance(first, Delta)
        if not isinstance(first, Delta) or not self.pending or not isinstance(self.pending[0], Delta):
            return first
        text, tokens, logprobs = [first.text], first.tokens, list(first.logprobs)
        while self.pending and isinstance(self.pending[0], Delta):
            more = self.pending.popleft()
            text.append(more.text)
            tokens += more.tokens
            logprobs += more.logprobs
        return Delta("".join(text), tokens, logprobs)


def create_app(engine, *, model_id: str, api_key: str | None = None, timeout: float = 600.0) -> FastAPI:
    model = engine.model
    metrics = Metrics(lambda: (engine.queue_depth, engine.active_sequences, engine.generated_total,
                               engine.cache_bytes))
    created = int(time.time())
    app = FastAPI(title="SmallMind", version="0.1.0",
                  description="An OpenAI-compatible API for a SmallMind model, with continuous batching "
                              "and prompt-prefix reuse.")
    errors.install(app)
    outboxes: dict = {}   # event loop -> its Outbox (uvicorn runs one loop; tests may start others)

    def outbox() -> Outbox:
        loop = asyncio.get_running_loop()
        if loop not in outboxes:
            outboxes.clear()   # keep the running loop's only: each job holds its own outbox
            outboxes[loop] = Outbox(loop)
        return outboxes[loop]

    def check_model(name: str) -> None:
        if name != model_id:
            raise APIError(404, f"the model {name!r} does not exist: this server serves {model_id!r}",
                           param="model", code="model_not_found")

    def text(value: str, param: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, f"{param} is not valid Unicode text (it holds a lone surrogate)", param=param) from None
        return value

    def stops(body) -> tuple[str, ...]:
        given = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        for s in given:
            if not text(s, "stop"):
                raise APIError(400, "stop strings must not be empty", param="stop")
        return tuple(given)

    def sampling(body, prompt_ids, max_tokens, logprobs) -> GenerationRequest:
        return GenerationRequest(prompt_ids=prompt_ids, max_tokens=max_tokens, deliver=None,
                                 temperature=1.0 if body.temperature is None else body.temperature,
                                 top_p=body.top_p, seed=body.seed,
                                 stop=stops(body), logprobs=logprobs, timeout=timeout)

    def usage(done: Finished) -> dict:
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}

    async def events(job: Job, request: Request | None):
        """The job's events as they come, recorded in the metrics, up to its Finished or Failed;
        a client gone before then (`request` polled, or the stream cancelled) frees its slot."""
        first = True
        try:
            while True:
                e = await job.next(request)
                if isinstance(e, Delta):
                    if first:
                        metrics.first_token(time.monotonic() - job.started)
                        first = False
                    metrics.delivered(e.tokens)
                    yield e
                    continue
                if isinstance(e, Finished):
                    metrics.finished(e.prompt_tokens, e.cached_tokens, time.monotonic() - job.started)
                yield e
                return
        finally:
            if not job.ended:
                job.handle.cancel()
                metrics.cancelled()

    async def run(job: Job, request: Request, on_delta) -> Finished:
        """Drive a non-streamed job to its end (a failure raises APIError)."""
        done = None
        async for e in events(job, request):
            if isinstance(e, Delta):
                on_delta(e)
            elif isinstance(e, Finished):
                done = e
            else:
                raise APIError(e.status, e.message)
        return done

    async def stream(job: Job, chunk, final, include_usage: bool):
        """SSE of a job: chunk(delta) per Delta, final(finished) at the end, usage if asked.
        The events already waiting go out together, in one write of the socket (a system call
        that wakes the client, the largest part of what the event loop does per token): the
        step that makes a request's last token usually ends it too, so its last text, the final
        chunk, the usage and [DONE] are one write, not four."""
        out = b""
        async for e in events(job, None):
            if isinstance(e, Delta):
                out += event(chunk(e))
            elif isinstance(e, Finished):
                out += event(final(e))
                if include_usage:
                    out += event(final(e, usage_only=True))
                out += DONE
            else:
                out += event(errors.error_body(e.status, e.message)) + DONE
            if not job.pending:
                yield out
                out = b""

    # -- endpoints ---------------------------------------------------------------------------------

    @app.get("/health", response_model=Health, responses={503: {"model": ErrorResponse}})
    async def health():
        if not engine.alive:
            raise APIError(503, "the engine has stopped", code="engine_stopped")
        return Health(model=model_id, active_sequences=engine.active_sequences, queue_depth=engine.queue_depth)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def list_models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "smallmind"}]}

    @app.post("/v1/completions", response_model=Completion, responses={**ERRORS, **STREAMED})
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        if isinstance(body.prompt, str) or isinstance(body.prompt[0], str):
            prompt = text(body.prompt if isinstance(body.prompt, str) else body.prompt[0], "prompt")
            try:
                prompt_ids = model.tokenize(prompt, add_bos=model.tokenizer.add_bos)
            except SmallMindError as e:
                raise APIError(400, str(e), param="prompt") from None
        else:
            prompt_ids = list(body.prompt)
        if not prompt_ids:
            raise APIError(400, "the prompt is empty: give at least one character or token", param="prompt")
        max_tokens = body.max_tokens
        if max_tokens is None:   # OpenAI's default, cut to what fits
            max_tokens = max(1, min(DEFAULT_COMPLETION_TOKENS, engine.ctx - len(prompt_ids)))
        job = Job(engine, sampling(body, prompt_ids, max_tokens, body.logprobs), outbox())
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        offset = [0]

        def logprobs(e: Delta):
            if body.logprobs is None:
                return None
            tokens = [t.token.decode("utf-8", errors="replace") for t in e.logprobs]
            offsets = list(itertools.accumulate([len(t) for t in tokens], initial=offset[0]))
            offset[0] = offsets.pop()
            return {"tokens": tokens, "token_logprobs": [t.logprob for t in e.logprobs],
                    "top_logprobs": [{b.decode("utf-8", errors="replace"): lp for b, lp in t.top}
                                     for t in e.logprobs],
                    "text_offset": offsets}

        def chunk(e: Delta):
            return {"id": rid, "object": "text_completion", "created": now, "model": model_id,
                    "choices": [{"index": 0, "text": e.text, "logprobs": logprobs(e), "finish_reason": None}]}

        def final(e: Finished, usage_only=False):
            if usage_only:
                return {"id": rid, "object": "text_completion", "created": now, "model": model_id,
                        "choices": [], "usage": usage(e)}
            return {"id": rid, "object": "text_completion", "created": now, "model": model_id,
                    "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": e.reason}]}

        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(job, chunk, final, include), media_type="text/event-stream")
        pieces, lps = [], []
        done = await run(job, request, lambda e: (pieces.append(e.text), lps.append(logprobs(e))))
        merged = None
        if body.logprobs is not None:
            merged = {key: [v for lp in lps for v in lp[key]] for key in
                      ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
        return {"id": rid, "object": "text_completion", "created": now, "model": model_id,
                "choices": [{"index": 0, "text": "".join(pieces), "logprobs": merged, "finish_reason": done.reason}],
                "usage": usage(done)}

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERRORS, **STREAMED})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs to be true", param="top_logprobs")
        if model.chat_template is None:
            raise APIError(400, f"the model {model_id!r} has no chat template: use /v1/completions",
                           param="messages", code="no_chat_template")
        messages = [{"role": m.role if m.role != "developer" else "system",
                     "content": text(m.content if isinstance(m.content, str)
                                     else "".join(p.text for p in m.content), "messages")}
                    for m in body.messages]
        try:
            prompt_ids = model.chat_prompt_ids(messages)
        except SmallMindError as e:
            raise APIError(400, str(e), param="messages") from None
        room = engine.ctx - len(prompt_ids)
        if room < 1:
            raise APIError(400, f"the messages are {len(prompt_ids)} tokens: no room left in this model's "
                                f"context of {engine.ctx}", param="messages", code="context_length_exceeded")
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = room if asked is None else asked
        k = (body.top_logprobs or 0) if body.logprobs else None
        job = Job(engine, sampling(body, prompt_ids, max_tokens, k), outbox())
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def logprobs(e: Delta):
            if k is None:
                return None
            return [{"token": t.token.decode("utf-8", errors="replace"), "logprob": t.logprob,
                     "bytes": list(t.token),
                     "top_logprobs": [{"token": b.decode("utf-8", errors="replace"), "logprob": lp,
                                       "bytes": list(b)} for b, lp in t.top]}
                    for t in e.logprobs]

        def frame(delta: dict, finish, lp=None, usage_of=None):
            out = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                   "choices": [] if usage_of else [{"index": 0, "delta": delta,
                                                    "logprobs": None if lp is None else {"content": lp},
                                                    "finish_reason": finish}]}
            if usage_of:
                out["usage"] = usage(usage_of)
            return out

        sent_role = [False]

        def chunk(e: Delta):
            delta = {"content": e.text}
            if not sent_role[0]:
                delta["role"] = "assistant"
                sent_role[0] = True
            return frame(delta, None, logprobs(e))

        def final(e: Finished, usage_only=False):
            if usage_only:
                return frame({}, None, usage_of=e)
            return frame({} if sent_role[0] else {"role": "assistant", "content": ""}, e.reason)

        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(job, chunk, final, include), media_type="text/event-stream")
        pieces, lps = [], []
        done = await run(job, request, lambda e: (pieces.append(e.text), lps.extend(logprobs(e) or [])))
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                             "logprobs": {"content": lps} if k is not None else None,
                             "finish_reason": done.reason}],
                "usage": usage(done)}

    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(RecordStatus, metrics=metrics)   # the outermost: it counts the 401s too
    return app


class RecordStatus:
    """ASGI middleware counting every response by path and status for /metrics."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def record(message):
            if message["type"] == "http.response.start":
                self.metrics.request(scope["path"] if scope["path"] in KNOWN_PATHS else "other", message["status"])
            await send(message)

        return await self.app(scope, receive, record)


KNOWN_PATHS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics",
                         "/openapi.json"})
