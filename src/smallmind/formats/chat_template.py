"""A GGUF model's chat template: its conversation -> prompt text.

A file with `tokenizer.chat_template` gets that Jinja template (chat_jinja), rendered the way
Hugging Face's apply_chat_template does (sandboxed, trim_blocks/lstrip_blocks, raise_exception, strftime_now, a
non-escaping tojson, the {% generation %} tag, bos_token/eos_token). A file without one gets the
turn format llama.cpp's llm_chat_apply_template writes for its family: gemma for Gemma
architectures, llama3 when the vocabulary has <|start_header_id|>, otherwise chatml (llama.cpp's
own default). The rendered text holds special-token strings: encode it with special=True.
"""

from ..errors import ChatTemplateError

KEY_CHAT_TEMPLATE = "tokenizer.chat_template"
ROLES = ("system", "user", "assistant", "tool")
GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3", "gemma3n")
LLAMA3_MARKER = "<|start_header_id|>"
# llama.cpp's trim(): C isspace, not Unicode whitespace
C_SPACE = " \t\n\v\f\r"


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_messages(messages) -> list:
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"messages[{k}] must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ChatTemplateError(f"messages[{k}]['role'] is {role!r}; it must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ChatTemplateError(f"messages[{k}]['content'] must be a string, got {type(message.get('content')).__name__}")
    return [dict(m) for m in messages]


def render_gemma(messages: list, add_generation_prompt: bool) -> str:
    # system text has no turn of its own: it opens the next user turn
    out = []
    system = ""
    for m in messages:
        if m["role"] == "system":
            system += m["content"].strip(C_SPACE)
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            out.append(system + "\n\n")
            system = ""
        out.append(m["content"].strip(C_SPACE) + "<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def render_chatml(messages: list, add_generation_prompt: bool) -> str:
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def render_llama3(messages: list, add_generation_prompt: bool) -> str:
    out = [f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip(C_SPACE)}<|eot_id|>"
           for m in messages]
    if add_generation_prompt:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


BUILTIN_FORMATS = {"gemma": render_gemma, "chatml": render_chatml, "llama3": render_llama3}


def token_text(meta, key: str) -> str:
    """The vocabulary string of the token id stored under key, or "" when there is none."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    token_id = meta.get(key)
    if isinstance(token_id, int) and 0 <= token_id < len(tokens):
        return tokens[token_id]
    return ""


class ChatTemplate:
    """render(messages, add_generation_prompt=True) -> prompt text; `name` says which format."""

    def __init__(self, name: str, source: str | None = None, bos_token: str = "", eos_token: str = ""):
        if source is None and name not in BUILTIN_FORMATS:
            raise ChatTemplateError(f"no chat format named {name!r} (known: {', '.join(BUILTIN_FORMATS)})")
        self.name = name
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.template = None
        if source is not None:
            # Jinja only for a file's own template (importing it costs ~6 MB of resident memory)
            from .chat_jinja import compile_template

            self.template = compile_template(source)

    @classmethod
    def from_gguf(cls, meta, architecture: str) -> "ChatTemplate":
        bos = token_text(meta, "tokenizer.ggml.bos_token_id")
        eos = token_text(meta, "tokenizer.ggml.eos_token_id")
        source = meta.get(KEY_CHAT_TEMPLATE)
        if source is not None:
            if not isinstance(source, str):
                raise ChatTemplateError(f"{KEY_CHAT_TEMPLATE} must be a string, got {type(source).__name__}")
            return cls("jinja", source, bos, eos)
        if architecture in GEMMA_ARCHITECTURES:
            return cls("gemma", None, bos, eos)
        if LLAMA3_MARKER in (meta.get("tokenizer.ggml.tokens") or ()):
            return cls("llama3", None, bos, eos)
        return cls("chatml", None, bos, eos)

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        messages = check_messages(messages)
        if self.template is None:
            return BUILTIN_FORMATS[self.name](messages, add_generation_prompt)
        from .chat_jinja import render_template

        return render_template(self.template, messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=self.bos_token, eos_token=self.eos_token)
