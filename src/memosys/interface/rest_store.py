"""`/api/v1/store`: MemStore over HTTP (memosys.infra.store), mounted by server.py.

- `GET /api/v1/store/publications` -> `{"items": [publication, ...]}`
- `POST /api/v1/store/publications` `{cube, until?, description?}` -> publication (needs
  `share` on the cube)
- `GET /api/v1/store/publications/{name}` -> publication
- `DELETE /api/v1/store/publications/{name}` -> the withdrawn publication; later pulls 404
- `POST /api/v1/store/publications/{name}/subscribe` -> publication (read access if the
  caller had none)
- `GET /api/v1/store/publications/{name}/archive?since=N` -> `application/zip`: a MIP
  archive of the versions after clock N (docs/cube-format.md), exported as the caller
Every call authenticates like the rest of the service (`Authorization: Bearer <key>`).
"""

from __future__ import annotations

import os
import tempfile
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from memosys.infra.store import MemStore
from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS

router = APIRouter(prefix="/api/v1/store", tags=["store"], responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]


class PublicationOut(BaseModel):
    name: str
    cube_id: str
    until: int | None
    description: str
    published_at: str
    published_by: str
    clock: int
    embedder: str
    subscribers: list[str]


class PublicationPage(BaseModel):
    items: list[PublicationOut]


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cube: str = Field(min_length=1, max_length=200)
    until: int | None = Field(default=None, ge=0, description="Publish the cube as of "
                              "this clock (a fixed version); default: follow the cube.")
    description: str = Field(default="", max_length=2000)


def _out(pub: Any) -> PublicationOut:
    data = pub.as_dict()
    data.pop("granted", None)
    return PublicationOut(**data)


@router.get("/publications", response_model=PublicationPage)
def list_publications(mos: Runtime) -> PublicationPage:
    """Everything this service publishes."""
    return PublicationPage(items=[_out(p) for p in MemStore(mos).publications()])


@router.post("/publications", response_model=PublicationOut,
             status_code=status.HTTP_201_CREATED)
def publish(mos: Runtime, body: PublishRequest) -> PublicationOut:
    """Publish a cube (or, with `until`, a fixed version of it)."""
    return _out(MemStore(mos).publish(body.cube, until=body.until,
                                      description=body.description))


@router.get("/publications/{name}", response_model=PublicationOut)
def get_publication(mos: Runtime, name: str) -> PublicationOut:
    return _out(MemStore(mos).publication(name))


@router.delete("/publications/{name}", response_model=PublicationOut)
def unpublish(mos: Runtime, name: str) -> PublicationOut:
    """Stop publishing: later pulls are refused, read access from subscribing withdrawn."""
    return _out(MemStore(mos).unpublish(name))


@router.post("/publications/{name}/subscribe", response_model=PublicationOut)
def subscribe(mos: Runtime, name: str) -> PublicationOut:
    """Become a subscriber (read-only access unless the publisher granted more)."""
    return _out(MemStore(mos).subscribe(name))


@router.get("/publications/{name}/archive", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}},
                             "description": "A MIP cube archive"}})
def archive(mos: Runtime, name: str,
            since: Annotated[int, Query(ge=0, le=2**62, description="Only versions after "
                                        "this clock")] = 0) -> FileResponse:
    """The versions published after `since`, as a MIP archive (a delta when since > 0)."""
    fd, tmp = tempfile.mkstemp(prefix="memosys-store-", suffix=".mip")
    os.close(fd)
    try:
        report = MemStore(mos).archive(name, tmp, since=since)
    except BaseException:
        os.unlink(tmp)
        raise
    return FileResponse(tmp, media_type="application/zip", filename=f"{name}.mip",
                        headers={"X-Memosys-Clock": str(report.until)},
                        background=BackgroundTask(os.unlink, tmp))
