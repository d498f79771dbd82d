"""Chat templates written in Jinja (a GGUF file's `tokenizer.chat_template`), compiled and rendered
the way Hugging Face's apply_chat_template does: sandboxed, trim_blocks/lstrip_blocks,
raise_exception, strftime_now, a non-escaping tojson, the {% generation %} tag. Kept apart from
chat_template so that a model without its own template never imports Jinja.
"""

import json
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ..errors import ChatTemplateError
from .chat_template import KEY_CHAT_TEMPLATE, one_line

# Python-level failures a template can provoke while rendering (bad indexing, wrong operand types)
RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError,
                 ArithmeticError, RecursionError)


class GenerationTag(Extension):
    """{% generation %}...{% endgeneration %}: Hugging Face marks assistant text with it; renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("render_body"), [], [], body).set_lineno(lineno)

    def render_body(self, caller):
        return caller()


class StrictSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, failing on an unsafe attribute instead of printing it as empty."""

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")


def raise_exception(message):
    raise jinja2.TemplateError(message)


def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Hugging Face's tojson: plain json.dumps, without Jinja's HTML escaping
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def compile_template(source: str) -> jinja2.Template:
    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"{KEY_CHAT_TEMPLATE} does not compile: {one_line(exc)}") from None


def render_template(template: jinja2.Template, **context) -> str:
    try:
        return template.render(**context)
    except RENDER_ERRORS as exc:
        raise ChatTemplateError(f"{KEY_CHAT_TEMPLATE} failed to render: {one_line(exc)}") from None
