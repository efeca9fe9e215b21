"""Errors over HTTP: every failure is `{"error": {"code": ..., "message": ...}}`.

The runtime raises typed errors (memosys.errors); this module is the one place that maps
their stable `code` to an HTTP status, and turns FastAPI's own failures (unknown route,
wrong method, a body that does not match the schema) into the same JSON shape, so a client
handles one error format whatever went wrong.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from memosys.errors import MemosysError

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[str, int] = {
    "invalid_input": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "embedder_mismatch": 409,
    "payload_too_large": 413,
    "unprocessable": 422,
    "refused_by_rule": 422,
    "llm_error": 502,
    "embedder_error": 502,
    "storage_error": 503,
}

_CODE_BY_STATUS = {400: "invalid_input", 401: "unauthenticated", 403: "permission_denied",
                   404: "not_found", 405: "method_not_allowed", 409: "conflict",
                   413: "payload_too_large", 415: "unsupported_media_type",
                   422: "invalid_input"}


class ErrorBody(BaseModel):
    code: str
    """Stable, machine-readable (see docs/rest.md)."""
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def status_for(exc: MemosysError) -> int:
    return STATUS_BY_CODE.get(exc.code, 500 if type(exc) is MemosysError else 400)


def error_response(status: int, code: str, message: str,
                   details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


# Every route documents these, so clients and schema checkers know the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "Invalid input"), (401, "Missing, unknown or revoked API key"),
        (403, "Not permitted"), (404, "Not found"), (409, "Conflict"),
        (413, "Request body too large"), (422, "Request does not match the schema"),
    ]
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MemosysError)
    async def _memosys(request: Request, exc: MemosysError) -> JSONResponse:
        status = status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, exc.code, str(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
        return error_response(422, "invalid_input", message or "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_STATUS.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, code, message,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error: {type(exc).__name__}")
