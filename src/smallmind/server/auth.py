"""Optional bearer-token authentication: with an API key set, every request but GET /health
must carry `Authorization: Bearer <key>`; the comparison takes the same time whatever the
token (hmac.compare_digest), so response times do not leak how much of a guess was right.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware), so that streamed responses and
client disconnects pass through untouched."""

import hmac

from .errors import error_response

OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
        if not hmac.compare_digest(given, self.expected):
            response = error_response(401, "a valid API key is needed: send Authorization: Bearer <key>",
                                      code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
