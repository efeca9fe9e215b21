"""`/api/v1` routes for sharing cubes, reading the audit log and managing users and API
keys (memosys.system_governance).

Who may do what is decided by the runtime view the request runs on: sharing needs the
`share` permission on the cube, the audit log shows admins everything and others their own
actions on cubes they can read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field

from memosys.infra.governance import DEFAULT_KEY_SCOPES, ApiKey, Grant, User
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


# Users and keys: the runtime decides who may (admins; a user may also make and revoke
# their own keys with at most their own scopes), so these routes only translate.
Role = Literal["admin", "owner", "member", "reader"]  # memosys.infra.governance.ROLES
Scope = Literal["read", "write", "delete", "share", "sensitive", "admin"]


class UserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    role: Role = "member"


class UserOut(BaseModel):
    id: str
    role: str
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(id=user.id, role=user.role, created_at=user.created_at)


class Users(BaseModel):
    items: list[UserOut]


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[Scope] = Field(default_factory=lambda: sorted(DEFAULT_KEY_SCOPES),
                                min_length=1, max_length=6)
    agent: str | None = Field(default=None, max_length=128)


class KeyOut(BaseModel):
    id: str
    user_id: str
    scopes: list[str]
    agent: str | None
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(id=key.id, user_id=key.user_id, scopes=sorted(key.scopes), agent=key.agent,
                   created_at=key.created_at, revoked_at=key.revoked_at)


class KeyCreated(BaseModel):
    id: str
    user_id: str
    scopes: list[str]
    secret: str
    """Shown this once; only its hash is stored."""


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED,
             tags=["users"])
def create_user(body: UserRequest, mos: Runtime) -> UserOut:
    """Create a user (admin only)."""
    return UserOut.of(mos.create_user(body.name, role=body.role))


@router.get("/users", response_model=Users, tags=["users"])
def list_users(mos: Runtime) -> Users:
    """Every user (admin only)."""
    return Users(items=[UserOut.of(u) for u in mos.list_users()])


@router.post("/users/{user}/keys", response_model=KeyCreated,
             status_code=status.HTTP_201_CREATED, tags=["users"])
def create_key(user: str, body: KeyRequest, mos: Runtime) -> KeyCreated:
    """A new API key for the user; the secret is in this answer only."""
    key_id, secret = mos.create_api_key(user, scopes=body.scopes, agent=body.agent)
    return KeyCreated(id=key_id, user_id=user, scopes=sorted(body.scopes), secret=secret)


@router.delete("/keys/{key_id}", response_model=KeyOut, tags=["users"])
def revoke_key(key_id: str, mos: Runtime) -> KeyOut:
    """Revoke a key now: its next request is a 401."""
    return KeyOut.of(mos.revoke_api_key(key_id))
