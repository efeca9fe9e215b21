"""The MCP server over streamable HTTP, with the REST service's auth rules (docs/mcp.md).

Modes, as `memosys serve` has them (memosys.interface.rest_auth): with API keys configured
every request needs `Authorization: Bearer <key>` (401 otherwise) and each tool call acts as
`mos.as_actor(principal)` for the key on *the request that carried it* — so a session id
learnt by someone else is useless without a key, and a revoked key stops at its next
request. Without keys (open mode) only loopback clients are served, as the local admin, and
an Authorization header is ignored (clients often send one anyway). By default the mode is
decided per request, so creating the first key switches a running open server to keys.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from mcp.server.mcpserver import Context
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from memosys.errors import AuthenticationError, MemosysError
from memosys.interface.mcp import LogLevel, build_mcp_server
from memosys.interface.rest_auth import KeyPresence, is_loopback
from memosys.system import MemOS

PRINCIPAL_SCOPE_KEY = "memosys.principal"
"""Where the auth middleware leaves the request's principal in the ASGI scope."""


def http_app(
    runtime: MemOS,
    *,
    open_access: bool | None = None,
    path: str = "/mcp",
    host: str = "127.0.0.1",
    log_level: LogLevel = "WARNING",
) -> ASGIApp:
    """The streamable-HTTP MCP endpoint at `path`, as an ASGI app for uvicorn.

    `open_access`: True = open mode (loopback only, local admin), False = API keys
    required, None = open while the installation has no active key. `host` is what the
    server binds to; the SDK's DNS-rebinding protection then accepts only matching Host
    headers."""

    def resolve(ctx: Context) -> MemOS:
        request = ctx.request_context.request
        principal = getattr(request, "scope", {}).get(PRINCIPAL_SCOPE_KEY)
        return runtime if principal is None else runtime.as_actor(principal)

    # Created now so the per-request views (as_actor copies the runtime) share one scheduler:
    # its decisions and usage statistics span every caller, as in `memosys serve`.
    _ = runtime.scheduler
    server = build_mcp_server(runtime, resolve, log_level=log_level)
    app = server.streamable_http_app(streamable_http_path=path, host=host)
    if open_access is None:
        is_open: Callable[[], bool] = _negate(KeyPresence(runtime))
    else:
        is_open = lambda: open_access  # noqa: E731 - a constant mode
    return McpAuthMiddleware(app, runtime, is_open)


def _negate(keys_present: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: not keys_present()


class McpAuthMiddleware:
    """The HTTP transport's one auth point (pure ASGI, so SSE streams pass untouched)."""

    def __init__(self, app: ASGIApp, runtime: MemOS, is_open: Callable[[], bool]) -> None:
        self.app = app
        self.runtime = runtime
        self.is_open = is_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the session manager's task group
            await self.app(scope, receive, send)
            return
        try:
            principal = await anyio.to_thread.run_sync(self._principal, scope)
        except MemosysError as exc:
            response = JSONResponse(  # the REST error body, so clients handle both alike
                {"error": {"code": exc.code, "message": str(exc)}}, status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="memosys"'})
            await response(scope, receive, send)
            return
        if principal is not None:
            scope = {**scope, PRINCIPAL_SCOPE_KEY: principal}
        await self.app(scope, receive, send)

    def _principal(self, scope: Scope) -> object | None:
        """The request's principal; None in open mode (the runtime's local admin)."""
        if self.is_open():
            client = scope.get("client")
            if not is_loopback(client[0] if client else None):
                raise AuthenticationError(
                    "this server has no API keys configured and serves loopback clients only")
            return None
        headers = dict(scope.get("headers") or [])
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <api key>'")
        return self.runtime.authenticate(key.strip())


def serve_http(app: ASGIApp, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
