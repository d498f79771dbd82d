"""Chat templates: the file's Jinja template (SmolLM2), llama.cpp's built-in formats for files
without one (Gemma 3), message validation, and the sandbox."""

import functools

import pytest
from model_files import gemma3_path, smollm2_path

from smallmind.errors import ChatTemplateError, SmallMindError
from smallmind.formats.chat_template import ChatTemplate
from smallmind.formats.gguf import GGUFFile

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
]


@functools.cache
def template_of(name: str) -> ChatTemplate:
    path, architecture = {"smollm2": (smollm2_path, "llama"), "gemma3": (gemma3_path, "gemma3")}[name]
    return ChatTemplate.from_gguf(GGUFFile(path()).metadata, architecture)


def test_smollm2_template_renders_chatml_turns():
    # written by hand from the template's text: each turn is <|im_start|>role\ncontent<|im_end|>\n
    assert template_of("smollm2").render(CONVERSATION) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_smollm2_template_adds_its_default_system_turn():
    assert template_of("smollm2").render(CONVERSATION[1:2], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n")


def test_gemma3_without_template_gets_gemma_turns_with_system_folded_into_user():
    tmpl = template_of("gemma3")
    assert tmpl.name == "gemma"
    assert tmpl.render(CONVERSATION + [{"role": "user", "content": "  And 3+3? \n"}]) == (
        "<start_of_turn>user\nYou are terse.\n\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n4.<end_of_turn>\n"
        "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n")


def test_file_without_template_and_with_llama3_tokens_gets_llama3_turns():
    meta = {"tokenizer.ggml.tokens": ["<|begin_of_text|>", "<|start_header_id|>"]}
    assert ChatTemplate.from_gguf(meta, "llama").render(CONVERSATION[1:2]) == (
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_file_without_template_or_known_family_gets_chatml():
    assert ChatTemplate.from_gguf({}, "qwen2").render(CONVERSATION[1:2], add_generation_prompt=False) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n")


def test_template_sees_bos_and_eos_tokens():
    meta = {"tokenizer.chat_template": "{{ bos_token }}|{{ eos_token }}",
            "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    assert ChatTemplate.from_gguf(meta, "llama").render([]) == "<s>|</s>"


def test_template_has_hugging_face_helpers():
    tmpl = ChatTemplate("jinja", "{% for m in messages %}{{ m | tojson }}{% endfor %}"
                                 "{% generation %}<{{ strftime_now('%Y') | length }}>{% endgeneration %}")
    assert tmpl.render([{"role": "user", "content": "é<"}]) == '{"role": "user", "content": "é<"}<4>'


def test_template_trims_blocks_like_hugging_face():
    tmpl = ChatTemplate("jinja", "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}")
    assert tmpl.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a\nb\n"


def test_broken_template_is_a_chat_template_error():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("jinja", "{% for m in messages %}")


def test_template_raising_an_exception_is_a_chat_template_error():
    tmpl = ChatTemplate("jinja", "{{ raise_exception('only user and assistant roles') }}")
    with pytest.raises(ChatTemplateError, match="only user and assistant roles"):
        tmpl.render(CONVERSATION)


def test_template_failing_at_render_is_a_one_line_chat_template_error():
    with pytest.raises(ChatTemplateError) as caught:
        ChatTemplate("jinja", "{{ messages[7]['content'] + 1 }}").render(CONVERSATION)
    assert "\n" not in str(caught.value) and isinstance(caught.value, SmallMindError)


@pytest.mark.parametrize("source", ["{{ ''.__class__ }}", "{{ messages.__class__.__mro__ }}",
                                    "{{ (messages|first).update({'role': 'x'}) }}"])
def test_sandbox_refuses_unsafe_access(source):
    with pytest.raises(ChatTemplateError):
        ChatTemplate("jinja", source).render(CONVERSATION)


@pytest.mark.parametrize("messages, match", [
    ("hello", "messages must be a list"),
    (["hello"], r"messages\[0\] must be a dict"),
    ([{"role": "robot", "content": "x"}], r"messages\[0\]\['role'\] is 'robot'"),
    ([{"role": "user"}], r"messages\[0\]\['content'\] must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}], r"messages\[1\]\['content'\]"),
])
def test_bad_messages_are_refused(messages, match):
    with pytest.raises(ChatTemplateError, match=match):
        template_of("smollm2").render(messages)


def test_non_string_template_in_metadata_is_refused():
    with pytest.raises(ChatTemplateError, match=r"tokenizer\.chat_template"):
        ChatTemplate.from_gguf({"tokenizer.chat_template": 5}, "llama")


@pytest.mark.slow
@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2] * 3, []])
def test_smollm2_template_renders_as_llama_cpp_python_does(messages):
    chat_format = pytest.importorskip("llama_cpp.llama_chat_format")
    meta = GGUFFile(smollm2_path()).metadata
    theirs = chat_format.Jinja2ChatFormatter(meta["tokenizer.chat_template"], eos_token="<|im_end|>",
                                             bos_token="<|im_start|>")(messages=messages).prompt
    assert template_of("smollm2").render(messages) == theirs
