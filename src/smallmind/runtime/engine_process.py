"""The serving engine in a process of its own, behind the Engine's face (what `smallmind serve` runs).

    engine = EngineProcess("model.gguf", threads=2, parallel=8, ctx=2048)   # waits for the model
    handle = engine.submit(GenerationRequest(prompt_ids, max_tokens=64, deliver=callback))
    ...                             # callback(Delta | Finished | Failed) from this side's reader thread
    handle.cancel()
    engine.close()

Why a process: in one process the HTTP server's event loop and the engine thread take turns on
one GIL, so the Python the engine runs between its kernels and the loop's per-token work (a
chunk's JSON, the socket write that wakes the client) add up instead of running side by side.
On a small model, whose step is short, that turn-taking set the server's throughput.

This side keeps the model's text side (runtime.model.ModelText: the tokenizer, the chat
template) and checks every request as Engine.submit does, so a bad one is refused at once; the
queue bound (EngineBusy) counts the requests not yet ended. The child loads the whole model,
runs an Engine, and sends each step's events, with its counters, as one message over a socket
pair. If the child ends on its own (killed, out of memory), the requests still running get a
Failed(500), later submits raise EngineStopped, and `on_exit` is called with what happened.

The child is `python -m smallmind.runtime.engine_process FD`: it reads its settings as the first
message on FD, ignores SIGINT (a terminal's Ctrl-C reaches both; this side stops it), and exits
when this side closes it or goes away.
"""

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

from ..errors import SmallMindError
from .engine import (DEFAULT_QUEUE_SIZE, Delta, EngineBusy, EngineStopped, Failed, Finished, GenerationRequest,
                     TokenLogprob, check_request)
from .generate import stop_strings
from .model import ModelText, default_model_path, load_tokenizer, model_kind

SWITCH_INTERVAL = 0.0002   # seconds: a thread waiting for the GIL gets it this soon (Python's default: 5 ms)
CLOSE_TIMEOUT = 30.0       # seconds the child may take to end its requests and exit after close()
REQUEST_FIELDS = ("prompt_ids", "max_tokens", "temperature", "top_p", "seed", "stop", "logprobs", "timeout")
DELTA, FINISHED, FAILED = 0, 1, 2   # an event's kind on the wire (a tuple of plain values pickles fastest)
FLUSH_INTERVAL = 0.003   # seconds: text that follows a request's first within this of the last message waits


class _Handle:
    """The submitter's side of a request in the child: cancel() frees its slot there."""

    def __init__(self, engine: "EngineProcess", rid: int):
        self._engine = engine
        self._rid = rid
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._engine._cancel(self._rid)


class EngineProcess:
    """An Engine over the model at `path` (None: the default model) in a child process; the
    keyword options are Engine's, `threads` the child's kernel and BLAS budget, `mmap` load()'s."""

    def __init__(self, path=None, *, threads: int | None = None, mmap: bool | None = None,
                 queue_size: int = DEFAULT_QUEUE_SIZE, on_exit: Callable[[str], None] | None = None,
                 **options):
        self.on_exit = on_exit
        self.lock = threading.Lock()           # sends, and the table of requests in flight
        self.delivers: dict = {}               # request id -> its deliver, until its Finished or Failed
        self.ids = 0
        self.failure = None                    # why the child ended, when it ended on its own
        self.closing = False
        self.stats = (0, 0, 0, 0)              # the child's queue depth, active sequences, tokens, cache bytes
        path = default_model_path() if path is None else path
        model_kind(path)   # a path that names no model is refused before a process starts
        ours, theirs = socket.socketpair()
        # the child imports this very package, wherever this process found it
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        try:
            self.process = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())], env=env,
                                            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        try:
            # The queue bound is kept here. A cancelled request leaves the count here at once but
            # the child's queue at its next step: the child's bound leaves room for those.
            self._send(("start", {"path": str(path), "threads": threads, "mmap": mmap,
                                  "options": {**options, "queue_size": 2 * queue_size}}))
            tokenizer, template = load_tokenizer(path)   # while the child loads the weights
            info = self._receive_ready()
            self.model = ModelText(tokenizer, name=info["name"], path=info["path"], vocab_size=info["vocab_size"],
                                   context_length=info["context_length"], chat_template=template)
        except BaseException:
            self.conn.close()   # the child, past its loading, reads the end of the socket and exits
            self._stop_child(kill=True)
            raise
        self.ctx = info["ctx"]
        self.parallel = info["parallel"]
        self.pool_bytes = info["pool_bytes"]
        self.queue_size = queue_size
        self.reader = threading.Thread(target=self._read, name="smallmind-engine-reader", daemon=True)
        self.reader.start()

    def _receive_ready(self) -> dict:
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            code = self.process.wait()
            raise SmallMindError(f"the engine process exited with code {code} while loading the model") from None
        if kind == "error":
            raise SmallMindError(value)
        return value

    # ------------------------------------------------------------------------------------------
    # Engine's face (any thread)

    @property
    def queue_depth(self) -> int:
        return self.stats[0]

    @property
    def active_sequences(self) -> int:
        return self.stats[1]

    @property
    def generated_total(self) -> int:
        return self.stats[2]

    @property
    def cache_bytes(self) -> int:
        return self.stats[3]

    @property
    def alive(self) -> bool:
        return not self.closing and self.failure is None

    def check(self, prompt_ids, max_tokens: int) -> None:
        """Raise the error a request of this prompt and max_tokens would meet, before queueing it."""
        check_request(prompt_ids, max_tokens, self.model.vocab_size, self.ctx)

    def submit(self, request: GenerationRequest) -> _Handle:
        check_request(request.prompt_ids, request.max_tokens, self.model.vocab_size, self.ctx)
        request.stop = stop_strings(request.stop)
        fields = {name: getattr(request, name) for name in REQUEST_FIELDS}
        fields["prompt_ids"] = [int(i) for i in fields["prompt_ids"]]
        with self.lock:
            if not self.alive:
                raise EngineStopped(self.failure or "the engine has stopped")
            waiting = len(self.delivers) - self.parallel
            if waiting >= self.queue_size:
                raise EngineBusy(f"{waiting} requests are already waiting: try again shortly")
            self.ids += 1
            rid = self.ids
            self.delivers[rid] = request.deliver
            try:
                self.conn.send(("submit", rid, fields))
            except OSError:
                del self.delivers[rid]
                raise EngineStopped("the engine process has stopped") from None
        return _Handle(self, rid)

    def close(self) -> None:
        """Stop the child: requests still running get Failed(503), as Engine.close gives them."""
        with self.lock:
            self.closing = True
        self._send(("close",))
        self.reader.join(CLOSE_TIMEOUT)
        self._stop_child()
        self.conn.close()

    def _cancel(self, rid: int) -> None:
        # as with Engine, a cancelled request gets no more events
        with self.lock:
            self.delivers.pop(rid, None)
        self._send(("cancel", rid))

    def _send(self, message) -> None:
        with self.lock:
            try:
                self.conn.send(message)
            except OSError:   # the child is gone: the reader fails what it ran
                pass

    def _stop_child(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        try:
            self.process.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # ------------------------------------------------------------------------------------------
    # the reader thread: the child's events to their requests

    def _read(self) -> None:
        while True:
            try:
                events, stats = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                break
            self.stats = stats
            for wire in events:
                rid, kind = wire[0], wire[1]
                deliver = self.delivers.get(rid)
                if deliver is None:
                    continue
                if kind != DELTA:
                    with self.lock:
                        self.delivers.pop(rid, None)
                _deliver(deliver, _decode(wire))
        if self.closing:
            return
        code = self.process.wait()
        self.failure = f"the engine process stopped (exit code {code})"
        with self.lock:
            delivers, self.delivers = self.delivers, {}
        for deliver in delivers.values():
            _deliver(deliver, Failed(500, self.failure))
        if self.on_exit is not None:
            self.on_exit(self.failure)


def _encode(rid: int, event) -> tuple:
    if isinstance(event, Delta):
        logprobs = [(t.token, t.logprob, t.top) for t in event.logprobs] if event.logprobs else None
        return rid, DELTA, event.text, event.tokens, logprobs
    if isinstance(event, Finished):
        return rid, FINISHED, event.reason, event.prompt_tokens, event.completion_tokens, event.cached_tokens
    return rid, FAILED, event.status, event.message


def _decode(wire: tuple):
    kind = wire[1]
    if kind == DELTA:
        return Delta(wire[2], wire[3], [TokenLogprob(*t) for t in wire[4]] if wire[4] else [])
    if kind == FINISHED:
        return Finished(*wire[2:])
    return Failed(*wire[2:])


def _deliver(deliver, event) -> None:
    # a face's callback that fails must not stop the events of every other request
    try:
        deliver(event)
    except Exception:
        traceback.print_exc(file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# the child


def _child(conn: Connection) -> int:
    from .. import kernels
    from .engine import Engine
    from .model import load

    _, start = conn.recv()
    send_lock = threading.Lock()
    pending: list = []   # the events not sent yet, as wire tuples (a step's, or a few within FLUSH_INTERVAL)
    handles: dict = {}   # request id -> its Handle, until it ends (both threads, under send_lock)
    engine = None

    def stats():
        return (engine.queue_depth, engine.active_sequences, engine.generated_total, engine.cache_bytes)

    last = [(0, 0, 0, 0), 0.0]   # the counters and the time of the last message
    urgent = [False]             # a request's first text or its end: the next step end sends
    started: set = set()         # requests whose first text is sent

    def deliver(rid: int, event) -> None:
        # the engine thread
        wire = _encode(rid, event)
        if wire[1] != DELTA:
            started.discard(rid)
            urgent[0] = True
        elif rid not in started:
            started.add(rid)
            urgent[0] = True
        pending.append(wire)

    def after_step():
        # The engine thread, once a step's events are delivered: one message for all of them.
        # Waking the other process costs tens of microseconds on both sides, as much as a small
        # model's step: deltas within FLUSH_INTERVAL of the last message go with the next one
        # (the stream's first text, its end and a change of the queue or the batch go at once).
        now, clock = stats(), time.monotonic()
        if not pending and now == last[0]:
            return
        if not urgent[0] and now[:2] == last[0][:2] and clock - last[1] < FLUSH_INTERVAL:
            return
        message = pickle.dumps((pending, now), protocol=pickle.HIGHEST_PROTOCOL)
        last[0], last[1], urgent[0] = now, clock, False
        with send_lock:
            for wire in pending:
                if wire[1] != DELTA:
                    handles.pop(wire[0], None)
            pending.clear()
            try:
                conn.send_bytes(message)
            except OSError:   # the other side is gone: the main thread sees it too, and closes
                pass

    try:
        if start["threads"] is not None:
            kernels.set_threads(start["threads"])
        model = load(start["path"], mmap=start["mmap"])
        engine = Engine(model, after_step=after_step, **start["options"])
    except SmallMindError as e:
        conn.send(("error", str(e)))
        return 1
    except MemoryError:
        conn.send(("error", "not enough memory to load the model and its KV slots"))
        return 1
    conn.send(("ready", {"name": model.name, "path": model.path, "vocab_size": model.vocab_size,
                         "context_length": model.context_length, "ctx": engine.ctx, "parallel": engine.parallel,
                         "pool_bytes": engine.pool_bytes}))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):   # the other side is gone
            break
        if message[0] == "close":
            break
        if message[0] == "cancel":
            with send_lock:
                handle = handles.pop(message[1], None)
                started.discard(message[1])
            if handle is not None:
                handle.cancel()
            continue
        _, rid, fields = message
        request = GenerationRequest(deliver=lambda e, rid=rid: deliver(rid, e), **fields)
        with send_lock:   # its end, sent by the engine thread, waits until its handle is in
            try:
                handles[rid] = engine.submit(request)
            except SmallMindError as e:   # checked on the other side already: a state that changed since
                status = 429 if isinstance(e, EngineBusy) else 503 if isinstance(e, EngineStopped) else 400
                try:
                    conn.send_bytes(pickle.dumps(([_encode(rid, Failed(status, str(e)))], stats())))
                except OSError:
                    pass
    engine.close()
    conn.close()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.setswitchinterval(SWITCH_INTERVAL)
    sys.exit(_child(Connection(int(sys.argv[1]))))
