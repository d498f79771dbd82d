"""Chat completions on a real chat model (SmolLM2 135M Instruct, when smallmind.load opens it)."""

import importlib.util

import openai
import pytest

import smallmind
from smallmind.errors import SmallMindError

MESSAGES = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def chat_model():
    if importlib.util.find_spec("smallmind.formats.gguf") is None:
        pytest.skip("the GGUF loader is not in this build")
    from smallmind.runtime.model import default_chat_model_path

    try:
        return smallmind.load(default_chat_model_path())
    except SmallMindError as e:
        pytest.skip(f"the chat model does not load: {e}")


@pytest.fixture(scope="module")
def server(chat_model, tmp_path_factory):
    from server_process import Server

    s = Server(["--model", chat_model.path, "--ctx", "512", "--parallel", "2"],
               tmp_path_factory.mktemp("chat") / "log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, chat_model, **options):
    return client.chat.completions.create(model=chat_model.name, messages=MESSAGES, max_tokens=12, **options)


def test_a_greedy_reply_is_the_models_own(client, chat_model):
    r = ask(client, chat_model, temperature=0)
    assert r.choices[0].message.content == "".join(chat_model.chat(MESSAGES, max_new_tokens=12, temperature=0))
    assert r.usage.prompt_tokens == len(chat_model.chat_prompt_ids(MESSAGES))


def test_a_streamed_reply_equals_the_unstreamed_one(client, chat_model):
    whole = ask(client, chat_model, seed=4).choices[0].message.content
    chunks = list(ask(client, chat_model, seed=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.prompt_tokens == len(chat_model.chat_prompt_ids(MESSAGES))


def test_chat_logprobs_give_each_tokens_bytes_and_alternatives(client, chat_model):
    r = ask(client, chat_model, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(bytes(t.bytes).decode("utf-8", "replace") for t in content).startswith(
        r.choices[0].message.content)
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob == pytest.approx(t.top_logprobs[0].logprob)


def test_the_next_turn_reuses_the_conversations_cache(client, chat_model):
    first = ask(client, chat_model, temperature=0).choices[0].message.content
    turn = MESSAGES + [{"role": "assistant", "content": first}, {"role": "user", "content": "Another?"}]
    r = client.chat.completions.create(model=chat_model.name, messages=turn, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens >= len(chat_model.chat_prompt_ids(MESSAGES))
