"""What every request passes through before a handler: body limits, errors, metrics, keys.

- ``Guard`` (ASGI middleware) refuses bodies over the limit with 413 before a handler parses
  them, and times every request for ``/metrics``.
- ``ApiError`` and the exception handlers give every error OpenAI's shape,
  ``{"error": {"message", "type", "param", "code"}}``, with ``param`` naming the field at fault.
  Bad input is a 4xx, never a 500: ConfigError -> 400, NotFound -> 404, a body that does not
  match the schema (or is not JSON) -> 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from typing import Any, Callable

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from parsona.errors import ConfigError
from parsona.store import NotFound, QuotaExceeded

from .metrics import Metrics

log = logging.getLogger("parsona.serve")


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.param, self.code = status, kind, message, param, code


def error_response(status: int, kind: str, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def unauthorized(param: str = "Authorization") -> ApiError:
    return ApiError(401, "authentication_error", "Send `Authorization: Bearer <api key>` with a valid key "
                    "(an admin creates users and keys with POST /v1/users).", param, "invalid_api_key")


def install_error_handlers(app, is_authenticated: Callable[[Request], bool]) -> None:
    """Register the handlers; ``is_authenticated`` lets a malformed body from a stranger get 401."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {"Retry-After": "1"} if exc.status == 429 else None
        return error_response(exc.status, exc.kind, exc.message, exc.param, exc.code, headers)

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError):
        if isinstance(exc, QuotaExceeded):  # the request is fine; this user holds too much already
            return error_response(429, "rate_limit_error", str(exc), exc.field, "quota_exceeded", {"Retry-After": "60"})
        return error_response(400, "invalid_request_error", str(exc), exc.field, "invalid_value")

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return error_response(404, "not_found_error", str(exc), exc.field, "not_found")

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        # FastAPI parses the body before our key check runs: answer strangers 401, not a schema hint.
        if not is_authenticated(request):
            e = unauthorized()
            return error_response(e.status, e.kind, e.message, e.param, e.code, {"WWW-Authenticate": "Bearer"})
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        param = field_name(first.get("loc", ()), unions=first.get("type") != "extra_forbidden")
        if first.get("type") == "json_invalid":
            return error_response(400, "invalid_request_error", f"body: not valid JSON ({first.get('msg')}). "
                                  "Send a JSON object.", "body", "invalid_json")
        if first.get("type") == "extra_forbidden" and _is_runtime_input(param):
            return error_response(400, "invalid_request_error", f"{param}: no adapter on this server takes it. Leave it "
                                  "out (GET /v1/models lists the conditioning this server takes).", param, "invalid_value")
        fix = "Remove it (see the schema at /docs)." if first.get("type") == "extra_forbidden" else "See the schema at /docs."
        return error_response(400, "invalid_request_error", f"{param}: {first.get('msg')}. {fix}", param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """Routing's own errors (unknown path, wrong method) in the same shape as every other error."""
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        message = {404: f"{request.url.path[:100]}: no such route (see /docs).",
                   405: f"{request.method} is not allowed here; use {headers.get('Allow', 'another method')}."}
        param = "body" if exc.status_code == 400 else None  # FastAPI's own 400: a body it could not parse
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, kind, message.get(exc.status_code, f"{param or 'request'}: {exc.detail}."),
                              param, code, headers or None)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "server_error", "Internal error; it has been logged.", None, "internal")


def allowed_methods(app, scope) -> list[str]:
    """The methods the routes at this path take (what a 405's ``Allow`` header lists)."""
    from starlette.routing import Match

    return sorted({m for route in app.routes if getattr(route, "methods", None)
                   and route.matches(scope)[0] == Match.PARTIAL for m in route.methods})  # PARTIAL: path yes, method no


def _is_runtime_input(name: str) -> bool:
    """A runtime input some registered adapter type declares (attached here or not)."""
    from parsona.adapters import get, names

    return any(name in get(t).input_names() for t in names())


# pydantic names the member of a union that failed inside ``loc`` ("persona", "list[float]", 0): not a field
UNION_MEMBER = re.compile(r"(bool|int|float|str|list|dict|function-\w+)(\[.*\])?")


def field_name(loc: tuple, unions: bool = True) -> str:
    """("body", "messages", 0, "content") -> "messages[0].content"; with ``unions``, the union members
    pydantic names in ``loc`` are left out (never for an unknown field: its name is the point)."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")
             and not (unions and isinstance(p, str) and UNION_MEMBER.fullmatch(p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


class RateLimiter:
    """A token bucket per user: ``rate`` requests a second on average, bursts of ``burst``.

    Buckets of users idle long enough to be full again are dropped, so memory is bounded by the users
    active in the last ``burst / rate`` seconds, not by every user there is.
    """

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = float(rate), max(int(burst), 1)
        self._buckets: dict[str, tuple[float, float]] = {}   # user -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, user_id: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(user_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - when) * self.rate)
            if tokens < 1:
                self._buckets[user_id] = (tokens, now)
                raise ApiError(429, "rate_limit_error", f"Too many requests: at most {self.rate:g} a second "
                               f"(bursts of {self.burst}). Retry after a second.", None, "rate_limit_exceeded")
            self._buckets[user_id] = (tokens - 1, now)
            if len(self._buckets) > 10_000:
                full = now - self.burst / self.rate
                self._buckets = {u: b for u, b in self._buckets.items() if b[1] > full}


class Guard:
    """ASGI middleware: size limits on request bodies (413), a deadline for receiving them (408: a
    client trickling its body holds no connection for long) and per-route timing for metrics."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, large_bodies: dict[tuple[str, str], int],
                 body_timeout_s: float = 30.0):
        self.app, self.metrics = app, metrics
        self.max_body_bytes, self.large_bodies = max_body_bytes, large_bodies  # (method, path) -> limit
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}
        key = (scope["method"], scope["path"])
        limit = self.large_bodies.get(key, self.max_body_bytes)
        param = "file" if key in self.large_bodies else "body"

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            try:
                body = await asyncio.wait_for(_read_body(receive, limit, _content_length(scope)), self.body_timeout_s)
            except asyncio.TimeoutError:
                await _send_json(send_wrapper, 408, {"error": {
                    "message": f"body: not received within {self.body_timeout_s:g} s. Send it at once.",
                    "type": "invalid_request_error", "param": "body", "code": "timeout"}})
                return
            if body is None:
                await _send_json(send_wrapper, 413, {"error": {
                    "message": f"{param}: larger than {limit} bytes. Send less.", "type": "invalid_request_error",
                    "param": param, "code": "too_large"}})
                return
            await self.app(scope, _replay(body, receive), send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("unmatched" if status["code"] == 404 else scope["path"])
            self.metrics.observe_request(path, scope["method"], status["code"], time.perf_counter() - start)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive, limit: int, declared: int | None) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed ``limit``."""
    if declared is not None and declared > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then wait for the disconnect, as the server would say

    return replay


async def _send_json(send, status: int, obj: dict) -> None:
    raw = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})
