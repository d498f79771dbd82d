"""How a streamed response leaves the app: the ASGI messages of the app itself, in process (the
real server's tests are test_server*.py). What is waiting when a chunk is sent goes with it."""

import asyncio
import json

import pytest
from server_process import tiny_checkpoint

import smallmind
from smallmind.runtime.engine import Engine
from smallmind.server.app import create_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    model = smallmind.load(tiny_checkpoint(tmp_path_factory.mktemp("writes") / "model"))
    engine = Engine(model, parallel=2, ctx=64)
    yield create_app(engine, model_id="tiny")
    engine.close()


def post(app, path: str, body: dict) -> list[bytes]:
    """The bodies of the http.response.body messages the app sends for one request, in order."""
    sent = []

    async def call():
        data = json.dumps(body).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        received = False

        async def receive():
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": data, "more_body": False}
            await asyncio.sleep(3600)   # the client stays connected

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                sent.append(message["body"])

        await app(scope, receive, send)

    asyncio.run(asyncio.wait_for(call(), 60))
    return sent


def test_the_last_text_final_chunk_usage_and_done_go_out_in_one_write(app):
    writes = post(app, "/v1/completions", {"model": "tiny", "prompt": "plain words", "max_tokens": 6, "seed": 3,
                                           "stream": True, "stream_options": {"include_usage": True}})
    events = [e for w in writes for e in w.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    usage = json.loads(events[-2][len(b"data: "):])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    final = json.loads(events[-3][len(b"data: "):])
    assert final["choices"][0]["finish_reason"] == "length"
    # the final chunk, the usage and [DONE] in one write (with the last text too when the event
    # loop takes the step's events at once, as it usually does)
    assert writes[-1].count(b"data: ") >= 3 and writes[-1].endswith(b"data: [DONE]\n\n")
    assert all(w.count(b"data: ") == 1 for w in writes[:-1])   # earlier ones: one chunk each
    text = "".join(json.loads(e[len(b"data: "):])["choices"][0]["text"] for e in events[:-3])
    assert text   # the tokens' text came with the deltas
