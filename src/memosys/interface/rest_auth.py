"""Who is calling: the single authentication point of the REST service.

`request_runtime` is the FastAPI dependency every `/api/v1` and `/v1` endpoint takes: it
reads `Authorization: Bearer <key>`, authenticates it (`MemOS.authenticate`) and returns
`mos.as_actor(principal)`, the runtime view on which every Memory API call is checked and
audited as that principal (memosys.system_governance). Permissions are never checked here:
the runtime is the one place that does.

Modes (`ServerConfig.open_access`):
- **api_key** (the installation has API keys): every request needs a valid key; missing,
  malformed, unknown or revoked keys are 401 (`AuthenticationError`).
- **open** (no keys yet): for local use only — requests act as the installation's local
  admin, and only loopback clients are served (anything else is 401). Any Authorization
  header is ignored (OpenAI clients always send a key). `memosys serve` refuses to bind a
  non-loopback address in this mode.
- `open_access=None` (what `memosys serve` uses) decides per request, re-reading whether
  keys exist at most every `KEYS_TTL` seconds: creating the first key switches a running
  open server to api_key mode.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass

from fastapi import Request

from memosys.errors import AuthenticationError
from memosys.system import MemOS

KEYS_TTL = 2.0


@dataclass(frozen=True)
class Caller:
    """The runtime view for this request and the user its key names (None in open mode)."""

    mos: MemOS
    user_id: str | None


class KeyPresence:
    """Whether the installation has any active API key, cached for KEYS_TTL seconds."""

    def __init__(self, mos: MemOS) -> None:
        self.mos = mos
        self._lock = threading.Lock()
        self._checked = -1e9
        self._value = False

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._checked > KEYS_TTL:
                self._value = any(k.active for k in self.mos.vault.governance.list_keys(None))
                self._checked = now
            return self._value


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def is_open(request: Request) -> bool:
    """Does this request run in open mode (no keys)?"""
    state = request.app.state
    if state.config.open_access is None:
        return not state.keys_present()
    return bool(state.config.open_access)


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthenticationError("Authorization header must be 'Bearer <api key>'")
    return value.strip()


def authenticate(request: Request) -> Caller:
    """The one auth seam: map the request's credentials to a runtime view."""
    mos: MemOS = request.app.state.mos
    if is_open(request):
        client = request.client.host if request.client else None
        if not is_loopback(client):
            raise AuthenticationError(
                "this server has no API keys configured and serves loopback clients only")
        return _remember(request, Caller(mos, None))
    key = bearer_key(request)
    if key is None:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <api key>'")
    principal = mos.authenticate(key)
    return _remember(request, Caller(mos.as_actor(principal), principal.user_id))


def _remember(request: Request, caller: Caller) -> Caller:
    request.state.caller = caller
    return caller


def request_runtime(request: Request) -> MemOS:
    """FastAPI dependency: the runtime (as the calling principal) for this request."""
    return authenticate(request).mos


def caller_user(request: Request) -> str | None:
    """The user the request's API key belongs to (None in open mode)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return caller.user_id if caller is not None else None
