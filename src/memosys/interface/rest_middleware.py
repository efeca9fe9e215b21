"""ASGI middleware of the REST service: the request size limit and the request metrics.

Both are plain ASGI (not Starlette's BaseHTTPMiddleware) so streaming responses (SSE chat)
pass through untouched and the size check happens before any endpoint reads the body.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from memosys.interface.rest_metrics import ServerMetrics

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Any

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _send_error(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Reject a request body over `max_bytes` with 413 before the endpoint runs.

    The body is read here (at most `max_bytes` of it) and replayed to the app, so a chunked
    upload without Content-Length is bounded too and a too-large request writes nothing."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        too_large = (f"request body over the limit of {self.max_bytes} bytes "
                     "(split large documents, or raise the server's --max-body)")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "invalid_input", "bad Content-Length")
                    return
                if declared > self.max_bytes:
                    await _send_error(send, 413, "payload_too_large", too_large)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, 413, "payload_too_large", too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: wait for the disconnect, as usual

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Count requests and time them per route template (`/api/v1/memories/{item_id}`, not
    one series per id), and track requests in flight."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        registry = metrics.registry
        self.requests = Counter("memosys_http_requests", "HTTP requests served",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "memosys_http_request_duration_seconds", "Time to the end of the response",
            ["method", "route"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.in_flight = Gauge("memosys_http_requests_in_flight", "Requests being served",
                               registry=registry)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.requests.labels(scope["method"], template, str(status)).inc()
            self.latency.labels(scope["method"], template).observe(time.perf_counter() - start)
