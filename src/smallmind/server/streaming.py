"""Server-sent events as the OpenAI API streams them: one `data: <json>` event per chunk and a
final `data: [DONE]`."""

import json


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
