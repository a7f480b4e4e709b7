"""Request bodies are limited while they stream in, not after they have arrived.

A pure ASGI middleware in front of the app, for every request that carries a body:

* ``/v1`` requests are authenticated from their ``Authorization`` header (by the same
  lookup as ``app.api.deps``, ``Services.tokens``) before one byte of the body is read:
  without a valid token the answer is 401 at once, whatever the body's size;
* a ``Content-Length`` above the endpoint's limit is answered 413 at once;
* a body without one (chunked) is counted as it arrives and cut off with a 413 the moment
  it passes the limit.

Each refusal closes the connection (``Connection: close``), so the server stops reading
what the client is still sending. The limits (``Settings``): ``max_upload_bytes`` for
``POST /v1/datasets``, ``max_predict_bytes`` for ``POST /v1/jobs/{id}/predict``,
``max_json_bytes`` for any other body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import anyio
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config.settings import Settings

UPLOAD = re.compile(r"^/v1/datasets/?$")
PREDICT = re.compile(r"^/v1/jobs/[^/]+/predict/?$")


@dataclass(frozen=True)
class BodyLimit:
    bytes: int
    setting: str  # the environment variable that sets it


def body_limit(settings: Settings, method: str, path: str) -> BodyLimit:
    """The most bytes a request body to ``method path`` may hold."""
    if method == "POST" and UPLOAD.match(path):
        return BodyLimit(settings.max_upload_bytes, "REPROGRAM_MAX_UPLOAD_BYTES")
    if method == "POST" and PREDICT.match(path):
        return BodyLimit(settings.max_predict_bytes, "REPROGRAM_MAX_PREDICT_BYTES")
    return BodyLimit(settings.max_json_bytes, "REPROGRAM_MAX_JSON_BYTES")


def too_large_message(limit: BodyLimit) -> str:
    return f"request body larger than {limit.bytes} bytes (the limit, {limit.setting})"


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once the 413 has been sent."""


class BodyLimits:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not chunked and (length is None or length.strip() == "0"):
            await self.app(scope, receive, send)  # no body: nothing to limit
            return
        path = scope["path"]
        if path.startswith("/v1/"):
            problem = await self._unauthenticated(scope, headers.get("authorization"))
            if problem is not None:
                await _refuse(scope, receive, send, 401, problem, {"WWW-Authenticate": "Bearer"})
                return
        limit = body_limit(self.settings, scope["method"], path)
        if length is not None and (not length.strip().isdigit() or int(length) > limit.bytes):
            await _refuse(scope, receive, send, 413, too_large_message(limit))
            return
        await self._limited(scope, receive, send, limit)

    async def _unauthenticated(self, scope: Scope, authorization: str | None) -> str | None:
        """Why the request is not authenticated (the messages of ``deps.current_tenant``),
        or None when its bearer token names a tenant."""
        scheme, token = get_authorization_scheme_param(authorization)
        if not (authorization and scheme and token) or scheme.lower() != "bearer":
            return "missing bearer token"
        services = getattr(scope["app"].state, "services", None)
        if services is None:  # not started (no lifespan): let the app answer
            return None

        def lookup() -> bool:
            with services.db.session() as s:
                return services.tokens.tenant(s, token) is not None

        return None if await anyio.to_thread.run_sync(lookup) else "invalid token"

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: BodyLimit) -> None:
        """Run the app with a ``receive`` that counts the body and stops it at the limit."""
        received = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    refused = True
                    if not started:
                        await _refuse(scope, receive, send, 413, too_large_message(limit))
                    raise BodyTooLarge(limit.bytes)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; whatever the app answers to the cut-off is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer ``{"detail": ...}`` and close the connection: the rest of the body is not read."""
    response = JSONResponse({"detail": detail}, status, {**(headers or {}), "Connection": "close"})
    await response(scope, receive, send)
