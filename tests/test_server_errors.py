"""Bad input never takes the server down nor gives a 5xx: an OpenAI error object with a 4xx,
and the next good request succeeds. Then schemathesis against the served OpenAPI document."""

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

GOOD = {"model": "model", "prompt": "emoji ", "max_tokens": 3}
CHAT = {"model": "model", "messages": [{"role": "user", "content": "hi"}]}


def completion(**changes):
    return {**GOOD, **changes}


@pytest.mark.parametrize("path, body, status, needle", [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, ""),
    ("/v1/completions", completion(max_tokens="many"), 400, "max_tokens"),
    ("/v1/completions", completion(temperature=[1]), 400, "temperature"),
    ("/v1/completions", completion(prompt=None), 400, "prompt"),
    ("/v1/completions", completion(model="gpt-4"), 404, "does not exist"),
    ("/v1/completions", completion(max_tokens=-5), 400, "max_tokens"),
    ("/v1/completions", completion(max_tokens=10**12), 400, "context"),
    ("/v1/completions", completion(prompt="emoji " * 300), 400, "context"),
    ("/v1/completions", completion(prompt=[5, 10**6]), 400, "vocabulary"),
    ("/v1/completions", completion(prompt=""), 400, "empty"),
    ("/v1/completions", b'{"model": "model", "prompt": "\\ud800"}', 400, "surrogate"),
    ("/v1/completions", completion(n=2), 400, "n"),
    ("/v1/completions", completion(stop=""), 400, "stop"),
    ("/v1/completions", completion(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("/v1/completions", completion(temperature=5), 400, "temperature"),
    ("/v1/completions", completion(seed=-1), 400, "seed"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, 400, "logprobs"),
    ("/v1/chat/completions", {**CHAT, "model": "other"}, 404, "does not exist"),
])
def test_bad_input_is_a_4xx_openai_error_and_the_server_carries_on(tiny_server, path, body, status, needle):
    got, answer = tiny_server.post(path, body)
    assert got == status
    assert set(answer["error"]) >= {"message", "type", "param", "code"}
    assert needle in answer["error"]["message"]
    got, answer = tiny_server.post("/v1/completions", GOOD)
    assert got == 200 and answer["usage"]["completion_tokens"] == 3


def test_an_unknown_path_is_a_404_openai_error(tiny_server):
    status, body = tiny_server.get("/v1/nothing")
    assert status == 404 and "message" in json.loads(body)["error"]


def test_generated_requests_never_get_a_server_error(tiny_server):
    # schemathesis's pytest plugin does not run under this pytest: drive its strategies with hypothesis
    schema = schemathesis.openapi.from_url(tiny_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models"}
    for operation, mode in [(op, mode) for op in operations for mode in GenerationMode
                            if op.method == "post" or mode == GenerationMode.POSITIVE]:  # GETs take no input
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            if mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
                case.body["model"] = "model"   # the served id: an unknown one stops at the first check
            case.call_and_validate(checks=[not_a_server_error])

        call()


def test_the_server_is_healthy_after_the_generated_requests(tiny_server):
    status, body = tiny_server.get("/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
