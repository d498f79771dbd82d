"""The real server on loopback, driven by the official openai client."""

import http.client
import json
import os
import signal
import threading
import time

import numpy as np
import openai
import pytest

import smallmind

PROMPT = "naïve café: "


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(tiny_server):
    return smallmind.load(tiny_server.checkpoint)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def greedy_ids(model, ids, n):
    # ids extended by n greedy tokens, each recomputed from scratch (no server, no cache)
    ids = list(ids)
    for _ in range(n):
        ids.append(int(model.logits(ids)[-1].argmax()))
    return ids


def test_models_lists_the_served_model(client, tiny_server):
    models = client.models.list().data
    assert [m.id for m in models] == [tiny_server.checkpoint.name]


def test_a_greedy_completion_is_the_models_own_continuation(client, model, model_id):
    r = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=12, temperature=0)
    assert r.choices[0].text == "".join(model.generate(PROMPT, max_new_tokens=12, temperature=0))
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(model.tokenize(PROMPT)), 12)


def test_a_streamed_completion_equals_the_unstreamed_one_and_ends_with_usage(client, model_id):
    whole = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=20, seed=5)
    chunks = list(client.completions.create(model=model_id, prompt=PROMPT, max_tokens=20, seed=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_the_same_seed_gives_the_same_text(client, model_id):
    texts = [client.completions.create(model=model_id, prompt=PROMPT, max_tokens=16, seed=s).choices[0].text
             for s in (1, 2, 1)]
    assert texts[0] == texts[2] != texts[1]


def test_a_stop_string_ends_the_completion_before_it(client, model_id):
    full = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=30, seed=9).choices[0].text
    stop = full[12:14]
    r = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=30, seed=9, stop=[stop, "zzz"])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_completion_logprobs_are_the_models_log_softmax(client, model, model_id):
    ids = model.tokenize(PROMPT)
    r = client.completions.create(model=model_id, prompt=ids, max_tokens=6, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    full = greedy_ids(model, ids, 6)
    logits = model.logits(full)[len(ids) - 1:-1].astype(np.float64)
    expected = logits - logits.max(1, keepdims=True)
    expected -= np.log(np.exp(expected).sum(1, keepdims=True))
    chosen = expected[np.arange(6), full[len(ids):]]
    np.testing.assert_allclose(lp.token_logprobs, chosen, atol=1e-4)
    for top, row, token in zip(lp.top_logprobs, expected, full[len(ids):]):
        assert len(top) == 2 and max(top.values()) == pytest.approx(row[token], abs=1e-4)
        np.testing.assert_allclose(sorted(top.values(), reverse=True), np.sort(row)[::-1][:2], atol=1e-4)
    assert lp.text_offset[0] == 0 and len(lp.tokens) == 6


def test_a_prompt_extending_an_earlier_one_reuses_its_cached_prefix(client, model, model_id):
    ids = model.tokenize("plain words and ")
    client.completions.create(model=model_id, prompt=ids, max_tokens=5, temperature=0)
    longer = greedy_ids(model, ids, 5) + model.tokenize(" emoji")
    r = client.completions.create(model=model_id, prompt=longer, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens == len(ids) + 5 - 1
    assert r.choices[0].text == model.detokenize(greedy_ids(model, longer, 4)[len(longer):])


def test_a_conversation_that_lost_its_only_slot_resumes_from_the_prefix_cache(tmp_path, tiny_server, model):
    from server_process import Server

    server = Server(["--model", str(tiny_server.checkpoint), "--ctx", "64", "--threads", "1", "--parallel", "1",
                     "--cache-mb", "1"], tmp_path / "log")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        ids = model.tokenize("plain words and naïve café: ")   # with 5 tokens, long enough to be kept
        client.completions.create(model="model", prompt=ids, max_tokens=5, temperature=0)
        client.completions.create(model="model", prompt=model.tokenize("日本語"), max_tokens=5, temperature=0)
        longer = greedy_ids(model, ids, 5) + model.tokenize(" emoji")
        r = client.completions.create(model="model", prompt=longer, max_tokens=4, temperature=0)
        assert r.usage.prompt_tokens_details.cached_tokens == len(ids) + 5 - 1
        assert r.choices[0].text == model.detokenize(greedy_ids(model, longer, 4)[len(longer):])
        metrics = server.get("/metrics")[1].decode()
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                  if line and not line.startswith("#")}
        assert values["smallmind_prompt_tokens_cached_total"] == len(ids) + 5 - 1
        assert 0 < values["smallmind_prefix_cache_bytes"] <= 2**20
    finally:
        server.stop()


def test_concurrent_streams_each_get_their_own_greedy_text(client, model, model_id):
    import concurrent.futures

    prompts = ["emoji ", "日本語", "plain", "café", "and words", "🙂"]

    def stream(prompt):
        chunks = client.completions.create(model=model_id, prompt=prompt, max_tokens=15, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in chunks if c.choices)

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        texts = list(pool.map(stream, prompts))
    assert texts == ["".join(model.generate(p, max_new_tokens=15, temperature=0)) for p in prompts]


def test_chat_on_a_model_without_a_chat_template_is_a_400(client, model_id):
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}])


def test_metrics_report_requests_tokens_and_latency(client, model_id, tiny_server):
    client.completions.create(model=model_id, prompt=PROMPT, max_tokens=3)
    status, body = tiny_server.get("/metrics")
    text = body.decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert status == 200
    assert values['smallmind_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert values["smallmind_generated_tokens_total"] >= 3 and values["smallmind_prompt_tokens_total"] >= 1
    assert values["smallmind_time_to_first_token_seconds_count"] >= 1
    assert values["smallmind_request_latency_seconds_count"] >= 1
    assert "smallmind_queue_depth" in values and "smallmind_active_sequences" in values
    assert "smallmind_tokens_per_second" in values
    assert "smallmind_prompt_tokens_cached_total" in values and "smallmind_prefix_cache_bytes" in values


def test_an_api_key_is_required_when_set(tmp_path, tiny_server):
    from server_process import Server

    server = Server(["--model", str(tiny_server.checkpoint), "--ctx", "64", "--threads", "1", "--api-key", "s3cret"],
                    tmp_path / "log")
    try:
        for key in (None, "wrong"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            status, body = server.post("/v1/completions", {"model": "model", "prompt": "a"}, headers)
            assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert server.get("/health")[0] == 200
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="model", prompt="a", max_tokens=2).usage.completion_tokens == 2
    finally:
        server.stop()


def test_a_client_that_goes_away_mid_stream_cancels_its_request(tiny_server, model_id):
    def metric(name):
        text = tiny_server.get("/metrics")[1].decode()
        return int(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))

    def cancelled():
        return metric("smallmind_cancelled_requests_total")

    before, generated_before = cancelled(), metric("smallmind_generated_tokens_total")
    conn = http.client.HTTPConnection("127.0.0.1", tiny_server.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"model": model_id, "prompt": PROMPT, "max_tokens": 500,
                                                        "stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.readline().startswith(b"data: ")
    conn.close()
    def active():
        return json.loads(tiny_server.get("/health")[1])["active_sequences"]

    deadline = time.monotonic() + 30   # a bound on a hang, not a timing
    while (cancelled() == before or active()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1 and active() == 0
    assert metric("smallmind_generated_tokens_total") - generated_before < 500   # it did not run to the end


def test_explicit_nulls_take_the_defaults(tiny_server, model_id):
    status, body = tiny_server.post("/v1/completions", {
        "model": model_id, "prompt": PROMPT, "max_tokens": 3, "temperature": None, "top_p": None, "n": None,
        "stream": None, "stop": None, "seed": None, "logprobs": None})
    assert status == 200 and body["usage"]["completion_tokens"] == 3 and body["choices"][0]["logprobs"] is None


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory):
    """A server with one KV slot and a queue of one, on a model with room for a long generation."""
    from server_process import Server, tiny_checkpoint

    root = tmp_path_factory.mktemp("one_slot")
    checkpoint = tiny_checkpoint(root / "model", context_length=4096)
    server = Server(["--model", str(checkpoint), "--ctx", "4096", "--parallel", "1", "--queue-size", "1",
                     "--threads", "1"], root / "log")
    yield server
    server.stop()


def generated_total(server) -> int:
    metrics = server.get("/metrics")[1].decode()
    return next(int(line.split()[1]) for line in metrics.splitlines()
                if line.startswith("smallmind_generated_tokens_total "))


def wait_for(condition):
    deadline = time.monotonic() + 30   # a bound on a hang, not a timing
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition()


def long_request(server, stream: bool) -> http.client.HTTPConnection:
    # a 4000-token completion that holds the server's only slot until its connection closes
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(
        {"model": "model", "prompt": PROMPT, "max_tokens": 4000, "stream": stream}),
        {"Content-Type": "application/json"})
    wait_for(lambda: json.loads(server.get("/health")[1])["active_sequences"] == 1)
    return conn


def test_a_full_queue_answers_429_and_a_closed_stream_lets_the_next_request_run(one_slot_server):
    server = one_slot_server
    before = generated_total(server)
    holder = long_request(server, stream=True)
    assert holder.getresponse().readline().startswith(b"data: ")
    waiting = {}
    thread = threading.Thread(target=lambda: waiting.update(
        answer=server.post("/v1/completions", {"model": "model", "prompt": PROMPT, "max_tokens": 2})))
    thread.start()
    wait_for(lambda: json.loads(server.get("/health")[1])["queue_depth"] == 1)
    status, body = server.post("/v1/completions", {"model": "model", "prompt": PROMPT, "max_tokens": 2})
    assert status == 429 and body["error"]["code"] == "queue_full"
    holder.close()                     # the slot is freed for the waiting request
    thread.join(60)
    status, body = waiting["answer"]
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    assert generated_total(server) - before < 4000


def test_a_client_that_goes_away_before_an_unstreamed_answer_frees_its_slot(one_slot_server):
    server = one_slot_server
    before = generated_total(server)
    long_request(server, stream=False).close()
    status, body = server.post("/v1/completions", {"model": "model", "prompt": PROMPT, "max_tokens": 2})
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    assert generated_total(server) - before < 4000


def children_of(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError):   # a process that ended meanwhile
            pass
    return found


def test_a_server_whose_engine_process_dies_ends_its_streams_and_exits_nonzero(tmp_path):
    from server_process import Server, tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "model", context_length=4096)
    server = Server(["--model", str(checkpoint), "--ctx", "4096", "--parallel", "1", "--threads", "1"],
                    tmp_path / "log")
    try:
        response = long_request(server, stream=True).getresponse()
        assert response.readline().startswith(b"data: ")
        (engine,) = children_of(server.proc.pid)
        os.kill(engine, signal.SIGKILL)
        rest = response.read().decode()   # the stream's error event, then [DONE]
        assert "the engine process stopped (exit code -9)" in rest and rest.endswith("data: [DONE]\n\n")
        assert server.proc.wait(60) != 0
    finally:
        server.stop()
    assert "the engine process stopped (exit code -9): the server stopped" in (tmp_path / "log").read_text()


def test_the_outbox_wakes_the_event_loop_once_for_a_burst_of_events():
    import asyncio

    from smallmind.server.app import Outbox

    class Recorder:
        def __init__(self):
            self.events = []

        def put(self, e):
            self.events.append(e)

    loop = asyncio.new_event_loop()
    wakeups = []
    schedule = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *a: (wakeups.append(a), schedule(*a))[1]
    try:
        outbox, jobs = Outbox(loop), [Recorder() for _ in range(8)]
        posting = threading.Thread(target=lambda: [outbox.post(job, (i, n)) for n in range(3)
                                                   for i, job in enumerate(jobs)])
        posting.start()
        posting.join()
        loop.run_until_complete(asyncio.sleep(0))
        assert len(wakeups) == 1
        assert [job.events for job in jobs] == [[(i, 0), (i, 1), (i, 2)] for i in range(8)]
        outbox.post(jobs[0], "later")   # drained: the next event wakes the loop again
        loop.run_until_complete(asyncio.sleep(0))
        assert len(wakeups) == 2 and jobs[0].events[-1] == "later"
    finally:
        loop.close()
