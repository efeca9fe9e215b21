"""The REST service: `create_app(mos, config)` builds the FastAPI app that `memosys serve`
runs with uvicorn. Routes live in `rest_*.py` (Memory API) and `openai_compat.py` (`/v1`);
this module wires them with the error format, the size limit, metrics and auth.

Layout of the service (docs/rest.md):
- `GET /health`, `GET /metrics` (Prometheus text), `GET /docs` (OpenAPI UI),
  `GET /openapi.json`
- `/api/v1/...` the Memory API, `/v1/...` OpenAI-compatible chat/models/embeddings
- `/ui` the web viewer, when its static files are installed (`interface/ui/`)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

from memosys.errors import PermissionDeniedError
from memosys.interface.rest_auth import KeyPresence, authenticate, is_open
from memosys.interface.rest_chat import router as chat_router
from memosys.interface.rest_errors import ERROR_RESPONSES, install_error_handlers
from memosys.interface.rest_governance import router as governance_router
from memosys.interface.rest_memories import router as memories_router
from memosys.interface.rest_metrics import CONTENT_TYPE, ServerMetrics
from memosys.interface.rest_middleware import BodyLimitMiddleware, MetricsMiddleware
from memosys.interface.rest_models import Health
from memosys.system import MemOS

DEFAULT_MAX_BODY = 8 * 1024 * 1024
"""Default request size limit: a 200k-character memory or a few-MB document fits."""

UI_DIR = Path(__file__).with_name("ui")


@dataclass(frozen=True)
class ServerConfig:
    open_access: bool | None = None
    """True: open mode (loopback clients only, as the local admin); False: API keys
    required; None: open while the installation has no API keys (see rest_auth)."""
    max_body_bytes: int = DEFAULT_MAX_BODY
    model_name: str = "memosys"
    """The model id `/v1/models` lists and `/v1/chat/completions` accepts."""


def _version() -> str:
    try:
        return version("memosys")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(mos: MemOS, config: ServerConfig | None = None) -> FastAPI:
    """The REST app over a runtime. The caller owns `mos` (and closes it)."""
    config = config or ServerConfig()
    app = FastAPI(
        title="memosys",
        version=_version(),
        description="A memory operating system for LLM applications: the Memory API "
        "(/api/v1), an OpenAI-compatible chat with memory (/v1) and metrics. "
        "Auth: `Authorization: Bearer <api key>`. Errors: "
        '`{"error": {"code": ..., "message": ...}}`.',
    )
    app.state.mos = mos
    app.state.config = config
    app.state.keys_present = KeyPresence(mos)
    metrics = ServerMetrics(mos)
    install_error_handlers(app)

    @app.get("/health", response_model=Health, tags=["service"])
    def health(request: Request) -> Health:
        """Liveness plus what the service runs on (no auth needed)."""
        return Health(status="ok", version=_version(), storage=type(mos.vault).__name__,
                      embedder=mos.embedder.id,
                      auth="open" if is_open(request) else "api_key")

    @app.get("/metrics", tags=["service"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}},
                              "description": "Prometheus text format"}, **ERROR_RESPONSES})
    def prometheus(request: Request) -> Response:
        """Request counts and latency per route, requests in flight, memories per cube and
        state, background jobs per state. Needs an admin key when keys are configured (the
        series name every tenant's cubes)."""
        caller = authenticate(request)
        if not caller.mos.actor.is_admin:
            raise PermissionDeniedError("metrics need an admin key")
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(memories_router)
    app.include_router(governance_router)
    app.include_router(chat_router)
    from memosys.interface.openai_compat import router as openai_router

    app.include_router(openai_router)
    from memosys.interface.rest_store import router as store_router

    app.include_router(store_router)
    from memosys.interface.rest_exchange import router as exchange_router

    app.include_router(exchange_router)
    from memosys.interface.rest_extraction import router as extraction_router

    app.include_router(extraction_router)
    from memosys.interface.rest_skills import router as skills_router

    app.include_router(skills_router)
    from memosys.interface.rest_consolidate import router as consolidate_router

    app.include_router(consolidate_router)
    from memosys.interface.rest_graph import router as graph_router

    app.include_router(graph_router)
    from memosys.interface.rest_events import router as events_router

    app.include_router(events_router)
    mount_ui(app)
    # The last added runs outermost: metrics see every response (a 413 included), and the
    # size limit runs before anything reads the body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def mount_ui(app: FastAPI) -> None:
    """The web viewer's static files at /ui (branch mcpui adds `interface/ui/`)."""
    if UI_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
