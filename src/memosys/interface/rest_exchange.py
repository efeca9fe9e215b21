"""`/api/v1/cubes/...` export and import over HTTP (memosys.infra.exchange), mounted by
server.py.

- `GET /api/v1/cubes/{cube}/export?format=mip|jsonl&since=&until=&redact=&embeddings=`
  -> the archive (`application/zip`, a MIP file, docs/cube-format.md) or plain JSONL
- `POST /api/v1/cubes/import?as=&on_conflict=&keep_ids=` with the archive bytes as the
  body -> the import report. The server's request size limit bounds the archive; a corrupt,
  tampered or unsafe archive is a 4xx (`invalid_archive`, `archive_tampered`,
  `unsafe_archive`) and writes nothing.
Both run as the request's actor: exporting needs read access (others' private memories
stay out, sensitive spans are redacted unless `redact=false` with the `sensitive` scope),
importing creates the cube as the caller.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from memosys.infra.exchange import ArchiveLimits, export_cube, import_archive
from memosys.infra.exchange_interop import export_plain_jsonl
from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS

router = APIRouter(prefix="/api/v1/cubes", tags=["exchange"], responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]
Clock = Annotated[int, Query(ge=0, le=2**62)]


def _temp(suffix: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix="memosys-exchange-", suffix=suffix)
    os.close(fd)
    return tmp


def _written(tmp: str, write: Callable[[], Any]) -> Any:
    """Run `write` into `tmp`, removing the file if it fails."""
    try:
        return write()
    except BaseException:
        os.unlink(tmp)
        raise


@router.get("/{cube}/export", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}, "application/x-ndjson": {}},
                             "description": "A MIP cube archive (or plain JSONL)"}})
def export(
    mos: Runtime,
    cube: str,
    fmt: Annotated[Literal["mip", "jsonl"], Query(alias="format")] = "mip",
    since: Clock = 0,
    until: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    redact: bool = True,
    embeddings: bool = True,
) -> FileResponse:
    """The cube as the caller sees it: a MIP archive (full history, embeddings; `since` > 0
    gives a delta) or, with `format=jsonl`, its active memories as plain JSON lines."""
    if fmt == "jsonl":
        tmp = _temp(".jsonl")
        _written(tmp, lambda: export_plain_jsonl(mos, cube, tmp, redact=redact))
        return FileResponse(tmp, media_type="application/x-ndjson",
                            filename=f"{cube}.jsonl", background=BackgroundTask(os.unlink, tmp))
    tmp = _temp(".mip")
    report = _written(tmp, lambda: export_cube(
        mos, cube, tmp, include_embeddings=embeddings, since=since, until=until,
        redact=redact))
    return FileResponse(tmp, media_type="application/zip", filename=f"{cube}.mip",
                        headers={"X-Memosys-Clock": str(report.until)},
                        background=BackgroundTask(os.unlink, tmp))


@router.post("/import", openapi_extra={"requestBody": {
    # any content type is read as the raw archive; octet-stream is what the schema names
    "required": True, "content": {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary"}}}}})
async def import_cube(
    request: Request,
    mos: Runtime,
    as_name: Annotated[str | None, Query(alias="as", min_length=1, max_length=200)] = None,
    on_conflict: Literal["merge", "skip", "replace"] | None = None,
    keep_ids: bool = False,
) -> dict[str, Any]:
    """Import a MIP archive (the request body) as cube `as` (default: the archive's name).
    Verified before anything is written; atomic. Returns the import report."""
    body = await request.body()  # already bounded by the server's size limit
    tmp = _temp(".mip")
    try:
        Path(tmp).write_bytes(body)
        report = await run_in_threadpool(
            import_archive, mos, tmp, name=as_name, on_conflict=on_conflict,
            keep_ids=keep_ids, limits=ArchiveLimits(max_archive_bytes=max(len(body), 1)))
    finally:
        os.unlink(tmp)
    return asdict(report)
