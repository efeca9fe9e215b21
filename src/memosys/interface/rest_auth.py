"""Who is calling: the single authentication point of the REST service.

`request_runtime` is the FastAPI dependency every `/api/v1` and `/v1` endpoint takes: it
reads `Authorization: Bearer <key>` and returns the runtime to call the Memory API on.

Two modes, chosen when the app is created (`ServerConfig.open_access`):
- **api_key** (keys configured): every request needs a valid key; missing, unknown or revoked
  keys are 401.
- **open** (no keys configured): for local use only — requests are served as the
  installation's local admin, and only from loopback clients; anything else is 401.
  Any Authorization header is ignored (OpenAI clients always send a key).
  `memosys serve` refuses to bind a non-loopback address in this mode.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import Request

from memosys.errors import MemosysError
from memosys.system import MemOS


class UnauthorizedError(MemosysError):
    """No usable credentials (HTTP 401)."""

    code = "unauthorized"
    exit_code = 9


@dataclass(frozen=True)
class Caller:
    """The runtime view for this request and the key it came with (None in open mode)."""

    mos: MemOS
    api_key: str | None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise UnauthorizedError("Authorization header must be 'Bearer <api key>'")
    return value.strip()


def authenticate(request: Request) -> Caller:
    """The one auth seam: map the request's credentials to a runtime view."""
    state = request.app.state
    mos: MemOS = state.mos
    if state.config.open_access:
        # Credentials are ignored, not rejected: OpenAI clients always send some key.
        client = request.client.host if request.client else None
        if not is_loopback(client):
            raise UnauthorizedError(
                "this server has no API keys configured and serves loopback clients only")
        return Caller(mos, None)
    key = bearer_key(request)
    if key is None:
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <api key>'")
    raise UnauthorizedError("unknown API key")


def request_runtime(request: Request) -> MemOS:
    """FastAPI dependency: the runtime (as the calling principal) for this request."""
    return authenticate(request).mos
