"""`/api/v1` routes for sharing cubes and reading the audit log (memosys.system_governance).

Who may do what is decided by the runtime view the request runs on: sharing needs the
`share` permission on the cube, the audit log shows admins everything and others their own
actions on cubes they can read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from memosys.infra.governance import Grant
from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]
Permission = Literal["read", "write", "delete", "share"]  # memosys.infra.governance.PERMISSIONS


class ShareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(max_length=128)
    permissions: list[Permission] = Field(default_factory=lambda: ["read"], min_length=1,
                                          max_length=4)


class GrantOut(BaseModel):
    cube_id: str
    user_id: str
    permissions: list[str]
    granted_by: str
    at: datetime

    @classmethod
    def of(cls, grant: Grant) -> GrantOut:
        return cls(cube_id=grant.cube_id, user_id=grant.user_id,
                   permissions=sorted(grant.permissions), granted_by=grant.granted_by,
                   at=grant.at)


class Grants(BaseModel):
    items: list[GrantOut]


class Unshared(BaseModel):
    removed: bool


@router.post("/cubes/{cube}/share", response_model=GrantOut, tags=["cubes"])
def share_cube(cube: str, body: ShareRequest, mos: Runtime) -> GrantOut:
    """Grant a user permissions on the cube (replacing what they had); `read` is implied."""
    return GrantOut.of(mos.share_cube(cube, body.user, body.permissions))


@router.get("/cubes/{cube}/share", response_model=Grants, tags=["cubes"])
def cube_grants(cube: str, mos: Runtime) -> Grants:
    """Who the cube is shared with."""
    return Grants(items=[GrantOut.of(g) for g in mos.cube_acl(cube)])


@router.delete("/cubes/{cube}/share/{user}", response_model=Unshared, tags=["cubes"])
def unshare_cube(cube: str, user: str, mos: Runtime) -> Unshared:
    """Take a user's grant on the cube away."""
    return Unshared(removed=mos.unshare_cube(cube, user))


class AuditPage(BaseModel):
    items: list[dict[str, Any]]
    """Entries: seq, at, actor, agent, key_id, op, outcome, cube_id, items ([id, version]
    pairs), detail (counts and ids, never memory text), prev_hash, hash."""
    next_after_seq: int | None
    """With `order=oldest`: pass as `after_seq` for the next page (null on the last)."""


@router.get("/audit", response_model=AuditPage, tags=["audit"])
def audit(
    mos: Runtime,
    cube: Annotated[str | None, Query(max_length=256)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    item_id: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
    order: Literal["newest", "oldest"] = "newest",
) -> AuditPage:
    """The audit trail: admins see everything, others their own actions."""
    entries = mos.audit_log(cube=cube, actor=actor, item_id=item_id, limit=limit + 1,
                            after_seq=after_seq, newest_first=order == "newest")
    page = entries[:limit]
    more = len(entries) > limit and order == "oldest"
    return AuditPage(items=[e.as_dict() for e in page],
                     next_after_seq=page[-1].seq if more and page else None)
