"""Identity, permissions and the audit log: the model and the storage contract.

* `Principal` — who acts: a user, their role, the scopes of the key they came in with.
* Roles: ``admin`` (everything, every cube, user and key management), ``owner`` (creates
  cubes and has read/write/delete/share on its own cubes), ``member`` (creates cubes and has
  read/write/delete on its own cubes; cannot share them), ``reader`` (never writes: any
  grant is capped to ``read``). On other users' cubes everyone but an admin has exactly
  what the cube's ACL grants them.
* Cube permissions: ``read``, ``write``, ``delete``, ``share``. A key's scopes cap them
  further (a key without ``write`` cannot write even its owner's cube); ``sensitive`` lets
  a key see unmasked sensitive data, ``admin`` is needed for user/key management.
* API keys are ``msk_<key id>_<secret>``: the secret is 32 random bytes, only its sha256
  is stored (a high-entropy secret needs no slow hash) and compared in constant time.
* The audit log is append-only and hash-chained: each entry's hash covers its fields and
  the previous entry's hash, so changing, removing or reordering a stored entry breaks
  verification from that entry on (`verify_chain`). Entries hold ids, versions and
  counts, never memory text, so an erased memory leaves no content behind.

`GovernanceStore` is implemented per backend (`infra/vault/sqlite_governance.py`,
`postgres_governance.py`) in the vault's own database; `Vault.governance` opens it.
Refinement of the agreed contract: `Principal` also carries the user's `role` as stored at
authentication; every checked call re-reads the key and user, so a revoked key or a
removed user stops working on the next call even for views made before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from memosys.errors import AuthenticationError, ValidationError

ROLES = ("admin", "owner", "member", "reader")
PERMISSIONS = ("read", "write", "delete", "share")
SCOPES = frozenset({"read", "write", "delete", "share", "sensitive", "admin"})
DEFAULT_KEY_SCOPES = frozenset({"read", "write", "delete", "share"})

ROLE_OWN_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset(PERMISSIONS),
    "owner": frozenset(PERMISSIONS),
    "member": frozenset({"read", "write", "delete"}),
    "reader": frozenset({"read"}),
}
"""What each role may do on a cube it owns."""

KEY_PREFIX = "msk_"
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$")
_KEY_RE = re.compile(r"^msk_([0-9a-f]{16})_([A-Za-z0-9_\-]{20,200})$")

GENESIS = "0" * 64
"""The `prev_hash` of the first audit entry."""


@dataclass(frozen=True)
class Principal:
    """Who performs an operation. Built by `MemOS.authenticate` (or `LOCAL_ADMIN`)."""

    user_id: str
    role: str = "member"
    scopes: frozenset[str] = DEFAULT_KEY_SCOPES
    agent: str | None = None
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" and "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


LOCAL_ADMIN = Principal(user_id="local", role="admin", scopes=SCOPES)
"""A plain `MemOS(...)` acts as this: the installation's local administrator."""


@dataclass(frozen=True)
class User:
    id: str
    role: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: str
    scopes: frozenset[str]
    agent: str | None
    created_at: datetime
    revoked_at: datetime | None = None
    secret_hash: str = field(default="", repr=False)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Grant:
    """A cube ACL entry: `user_id` may do `permissions` on `cube_id`."""

    cube_id: str
    user_id: str
    permissions: frozenset[str]
    granted_by: str
    at: datetime


@dataclass(frozen=True)
class AuditEntry:
    """One audit record. `items` holds (memory id, version) pairs; `detail` holds counts,
    kinds and ids — never memory text."""

    seq: int
    at: datetime
    actor: str
    agent: str | None
    key_id: str | None
    op: str
    outcome: str
    """ok | denied | not_found | error"""
    cube_id: str | None
    items: tuple[tuple[str, int], ...]
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "at": self.at.isoformat(), "actor": self.actor,
            "agent": self.agent, "key_id": self.key_id, "op": self.op,
            "outcome": self.outcome, "cube_id": self.cube_id,
            "items": [list(p) for p in self.items], "detail": self.detail,
            "prev_hash": self.prev_hash, "hash": self.hash,
        }


@dataclass(frozen=True)
class NewAuditEntry:
    """An audit record before the store gives it a sequence number and a hash."""

    actor: str
    op: str
    outcome: str = "ok"
    cube_id: str | None = None
    items: tuple[tuple[str, int], ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None
    key_id: str | None = None


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    entries: int
    head: str
    """Hash of the last entry: record it elsewhere to detect a truncated tail later."""
    first_bad_seq: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class ReviewEntry:
    """A memory waiting for a person or agent to approve or reject (lifecycle)."""

    id: str
    cube_id: str
    item_id: str
    kind: str
    """contradiction | low_confidence | feedback"""
    reason: str
    related_ids: tuple[str, ...]
    state: str
    """open | approved | rejected"""
    created_at: datetime
    resolved_by: str | None = None
    resolved_at: datetime | None = None


def entry_hash(prev_hash: str, seq: int, at: datetime, e: NewAuditEntry) -> str:
    """sha256 over the previous hash and a canonical JSON of every field."""
    body = json.dumps(
        [prev_hash, seq, _iso(at), e.actor, e.agent, e.key_id, e.op, e.outcome, e.cube_id,
         [list(p) for p in e.items], e.detail],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _iso(at: datetime) -> str:
    """Microsecond UTC timestamps: both backends store them exactly."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def verify_chain(entries: Iterable[AuditEntry]) -> AuditVerification:
    """Recompute the chain; the first entry whose hash, link or sequence is wrong is
    reported (a changed field, a removed or inserted row, a reordering)."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for e in entries:
        count += 1
        if e.seq != expected_seq:
            return AuditVerification(False, count, prev, e.seq,
                                     f"entry {expected_seq} is missing (found {e.seq})")
        if e.prev_hash != prev:
            return AuditVerification(False, count, prev, e.seq,
                                     "link to the previous entry is broken")
        again = entry_hash(prev, e.seq, e.at, NewAuditEntry(
            e.actor, e.op, e.outcome, e.cube_id, e.items, e.detail, e.agent, e.key_id))
        if not hmac.compare_digest(again, e.hash):
            return AuditVerification(False, count, prev, e.seq,
                                     "entry was modified after it was written")
        prev = e.hash
        expected_seq += 1
    return AuditVerification(True, count, prev)


# --- keys ----------------------------------------------------------------------------------
def new_key() -> tuple[str, str, str]:
    """(key id, full secret to hand out once, sha256 to store)."""
    key_id = secrets.token_hex(8)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, secret, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_key(secret: Any) -> str:
    """The key id inside a well-formed key, else AuthenticationError."""
    if not isinstance(secret, str):
        raise AuthenticationError("an API key must be a string")
    match = _KEY_RE.match(secret.strip())
    if match is None:
        raise AuthenticationError("invalid API key")
    return match.group(1)


def key_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret.strip()), stored_hash)


def check_user_id(value: Any) -> str:
    if not isinstance(value, str) or not _USER_RE.match(value):
        raise ValidationError(
            f"invalid user name {value!r}: 1-128 characters of letters, digits, "
            "'_', '.', '@', '-', starting with a letter or digit")
    return value


def check_role(value: Any) -> str:
    if value not in ROLES:
        raise ValidationError(f"role must be one of {list(ROLES)}, got {value!r}")
    return str(value)


def check_scopes(values: Any) -> frozenset[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValidationError("scopes must be a list of strings")
    scopes = frozenset(values)
    unknown = scopes - SCOPES
    if unknown:
        raise ValidationError(f"unknown scope(s) {sorted(unknown)}; known: {sorted(SCOPES)}")
    return scopes


def check_permissions(values: Any) -> frozenset[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, Iterable):
        raise ValidationError("permissions must be a list of strings")
    perms = frozenset(values)
    unknown = perms - set(PERMISSIONS)
    if unknown:
        raise ValidationError(
            f"unknown permission(s) {sorted(unknown)}; known: {list(PERMISSIONS)}")
    if not perms:
        raise ValidationError("give at least one permission (read, write, delete, share)")
    return perms | {"read"}  # anything you may change you may also see


# --- storage contract ----------------------------------------------------------------------
class GovernanceStore(ABC):
    """Users, keys, cube ACLs, the audit log, cube policies and the review queue, kept in
    the vault's database. All methods are safe to call from several threads/processes."""

    # users
    @abstractmethod
    def create_user(self, user_id: str, role: str) -> User:
        """ConflictError if the user exists."""

    @abstractmethod
    def get_user(self, user_id: str) -> User:
        """NotFoundError if absent."""

    @abstractmethod
    def list_users(self) -> list[User]: ...

    @abstractmethod
    def set_role(self, user_id: str, role: str) -> User: ...

    @abstractmethod
    def delete_user(self, user_id: str) -> None:
        """Removes the user, revokes their keys and drops their grants."""

    # keys
    @abstractmethod
    def add_key(self, key: ApiKey) -> ApiKey: ...

    @abstractmethod
    def get_key(self, key_id: str) -> ApiKey:
        """NotFoundError if absent (a revoked key is returned, with `revoked_at`)."""

    @abstractmethod
    def list_keys(self, user_id: str | None = None) -> list[ApiKey]: ...

    @abstractmethod
    def revoke_key(self, key_id: str) -> ApiKey: ...

    # cube ACL
    @abstractmethod
    def grant(self, grant: Grant) -> Grant:
        """Replace the user's permissions on the cube."""

    @abstractmethod
    def revoke_grant(self, cube_id: str, user_id: str) -> bool: ...

    @abstractmethod
    def grants_for_user(self, user_id: str) -> dict[str, frozenset[str]]:
        """cube id -> permissions."""

    @abstractmethod
    def grants_for_cube(self, cube_id: str) -> list[Grant]: ...

    # audit
    @abstractmethod
    def append_audit(self, entries: Sequence[NewAuditEntry]) -> list[AuditEntry]:
        """Append atomically, chaining each to the last stored hash (serialised across
        writers)."""

    @abstractmethod
    def audit_entries(
        self,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        cube_id: str | None = None,
        actor: str | None = None,
        item_id: str | None = None,
        newest_first: bool = False,
    ) -> list[AuditEntry]: ...

    # cube policies (PII handling, TTL per type, decay settings)
    @abstractmethod
    def get_policy(self, cube_id: str) -> dict[str, Any]:
        """{} when none was set."""

    @abstractmethod
    def set_policy(self, cube_id: str, policy: dict[str, Any]) -> None: ...

    def update_policy(self, cube_id: str,
                      change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Replace the cube's policy with `change(current)` atomically (read and write in
        one transaction, so concurrent writers of different fields lose nothing); returns
        the new policy. `change` may raise to abort. Backends override this default."""
        policy = change(self.get_policy(cube_id))
        self.set_policy(cube_id, policy)
        return policy

    # review queue
    @abstractmethod
    def add_review(self, entry: ReviewEntry) -> ReviewEntry:
        """An open entry for the same (item, kind) already queued is returned instead."""

    @abstractmethod
    def get_review(self, review_id: str) -> ReviewEntry: ...

    @abstractmethod
    def list_reviews(
        self, cube_ids: Sequence[str] | None = None, state: str | None = "open",
        limit: int = 100,
    ) -> list[ReviewEntry]: ...

    @abstractmethod
    def resolve_review(self, review_id: str, state: str, by: str) -> ReviewEntry:
        """ConflictError if it is no longer open."""

    @abstractmethod
    def forget_items(self, item_ids: Sequence[str]) -> None:
        """Drop review entries about purged memories (they may quote reasons)."""


def utcnow() -> datetime:
    return datetime.now(UTC)
