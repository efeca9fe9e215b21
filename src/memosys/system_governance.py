"""The governance part of the Memory API, mixed into `MemOS`: actors, users, keys, sharing,
audit, cube policies, export redaction and the lifecycle entry points.

* `mos.authenticate(secret) -> Principal`; `mos.as_actor(principal) -> MemOS` is a light
  view (same vault, embedder, retriever, models) whose every call is checked and audited
  as that principal. A plain `MemOS(...)` acts as `LOCAL_ADMIN`.
* User and key management needs an admin (role admin and the `admin` scope); a user may
  create keys for themselves with no more scopes than the key they use, and revoke them.
* Sharing needs the `share` permission on the cube (its owner with role owner/admin, or a
  grant that includes share).
* `record_audit(op, items=..., detail=...)` lets other parts (chat: which memories went
  into an answer) write to the audit log as the current actor.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memosys.access import DEFAULT_PII_POLICY, PII_POLICIES, Access
from memosys.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from memosys.infra.events import event_actor
from memosys.infra.governance import (
    DEFAULT_KEY_SCOPES,
    LOCAL_ADMIN,
    ApiKey,
    AuditEntry,
    AuditVerification,
    Grant,
    Principal,
    User,
    check_permissions,
    check_role,
    check_scopes,
    check_user_id,
    key_matches,
    new_key,
    parse_key,
    utcnow,
    verify_chain,
)
from memosys.infra.pii import redact_item
from memosys.infra.vault.base import ItemFilter
from memosys.types import MemCube, MemoryItem

if TYPE_CHECKING:
    from memosys.infra.vault.base import Vault
    from memosys.operation.lifecycle import Lifecycle
    from memosys.system import MemOS

AuditItems = Iterable[MemoryItem | tuple[str, int]]


@dataclass(frozen=True)
class ExportGuard:
    cube: MemCube
    filter: Callable[[ItemFilter], ItemFilter]
    redact: Callable[[MemoryItem], MemoryItem]


class GovernanceAPI:
    vault: Vault
    _actor: Principal = LOCAL_ADMIN
    _is_view: bool = False

    # --- actors --------------------------------------------------------------------------
    @property
    def actor(self) -> Principal:
        """Who this runtime (or view) acts as."""
        return self._actor

    @property
    def _access(self) -> Access:
        found: Access | None = self.__dict__.get("_access_cache")
        if found is None or found.principal is not self._actor:
            found = Access(self, self._actor)  # type: ignore[arg-type]
            self.__dict__["_access_cache"] = found
        event_actor.set(self._actor.user_id)  # every API call passes here: events' actor
        return found

    def as_actor(self, principal: Principal) -> MemOS:
        """A view acting as `principal`: shares everything but the actor."""
        if not isinstance(principal, Principal):
            raise ValidationError("as_actor needs a Principal (see MemOS.authenticate)")
        # One scheduler per runtime (its usage counts, decisions and worker), so create it
        # before copying; each call passes the view to it, so checks stay the view's.
        self.scheduler  # noqa: B018
        view = copy.copy(self)
        view.__dict__.pop("_access_cache", None)
        view.__dict__["_reader"] = None  # its MemReader writes as the view's actor
        view._actor = principal
        view._is_view = True
        return view  # type: ignore[return-value]

    def authenticate(self, api_key: str) -> Principal:
        """The principal an API key stands for; AuthenticationError if unknown/revoked."""
        key_id = parse_key(api_key)
        store = self.vault.governance
        try:
            key = store.get_key(key_id)
            user = store.get_user(key.user_id)
        except NotFoundError:
            raise AuthenticationError("invalid API key") from None
        if not key_matches(api_key, key.secret_hash):
            raise AuthenticationError("invalid API key")
        if not key.active:
            raise AuthenticationError("API key revoked")
        return Principal(user_id=user.id, role=user.role, scopes=key.scopes, agent=key.agent,
                         key_id=key.id)

    def _require_admin(self, op: str) -> None:
        access = self._access
        if not access.unrestricted:
            access.check_live()
            access.audit_refusal(op, "denied", detail={"needs": "admin"})
            raise PermissionDeniedError(f"{op} needs an admin")

    # --- users and keys ------------------------------------------------------------------
    def create_user(self, name: str, role: str = "member") -> User:
        self._require_admin("create_user")
        user = self.vault.governance.create_user(check_user_id(name), check_role(role))
        self._audit("create_user", detail={"user": user.id, "role": user.role})
        return user

    def list_users(self) -> list[User]:
        self._require_admin("list_users")
        return self.vault.governance.list_users()

    def set_user_role(self, name: str, role: str) -> User:
        self._require_admin("set_user_role")
        user = self.vault.governance.set_role(check_user_id(name), check_role(role))
        self._audit("set_user_role", detail={"user": user.id, "role": user.role})
        return user

    def delete_user(self, name: str) -> None:
        """Remove a user: their keys stop working at once and their grants go."""
        self._require_admin("delete_user")
        self.vault.governance.delete_user(check_user_id(name))
        self._audit("delete_user", detail={"user": name})

    def create_api_key(
        self, user: str, scopes: Iterable[str] = DEFAULT_KEY_SCOPES, agent: str | None = None,
    ) -> tuple[str, str]:
        """(key id, secret). The secret is shown this once; only its hash is stored."""
        wanted = check_scopes(scopes)
        access = self._access
        if not access.unrestricted:
            access.check_live()
            if user != self._actor.user_id or not wanted <= self._actor.scopes:
                access.audit_refusal("create_api_key", "denied", detail={"user": user})
                raise PermissionDeniedError(
                    "only an admin may create keys for others or with more scopes")
        found = self.vault.governance.get_user(check_user_id(user))
        if agent is not None and (not isinstance(agent, str) or not agent.strip()):
            raise ValidationError("agent must be a non-empty string")
        key_id, secret, digest = new_key()
        self.vault.governance.add_key(ApiKey(key_id, found.id, wanted, agent, utcnow(),
                                             None, digest))
        self._audit("create_api_key", detail={"user": found.id, "key_id": key_id,
                                              "scopes": sorted(wanted)})
        return key_id, secret

    def list_api_keys(self, user: str | None = None) -> list[ApiKey]:
        access = self._access
        if not access.unrestricted:
            access.check_live()
            if user not in (None, self._actor.user_id):
                raise PermissionDeniedError("only an admin may list other users' keys")
            user = self._actor.user_id
        return self.vault.governance.list_keys(user)

    def revoke_api_key(self, key_id: str) -> ApiKey:
        """Revoke now: the next call with that key fails, views made from it included."""
        store = self.vault.governance
        key = store.get_key(_text(key_id, "key id"))
        access = self._access
        if not access.unrestricted:
            access.check_live()
            if key.user_id != self._actor.user_id:
                raise NotFoundError(f"no API key {key_id!r}")
        revoked = store.revoke_key(key.id)
        self._audit("revoke_api_key", detail={"key_id": key.id, "user": key.user_id})
        return revoked

    # --- sharing -------------------------------------------------------------------------
    def _cube_for(self, cube: str, perm: str, op: str) -> MemCube:
        found = self.vault.get_cube(_text(cube, "cube"))
        self._access.require_cube(found, perm, op=op, name=cube)
        return found

    def share_cube(self, cube: str, user: str, permissions: Iterable[str] | str = ("read",)
                   ) -> Grant:
        """Grant `user` these permissions (read, write, delete, share) on the cube,
        replacing what they had."""
        found = self._cube_for(cube, "share", "share_cube")
        perms = check_permissions(permissions)
        target = self.vault.governance.get_user(check_user_id(user))
        if not self._access.unrestricted and not perms <= self._access.permissions(found):
            raise PermissionDeniedError("cannot grant permissions you do not have")
        grant = self.vault.governance.grant(
            Grant(found.id, target.id, perms, self._actor.user_id, utcnow()))
        self._audit("share_cube", cube_id=found.id,
                    detail={"user": target.id, "permissions": sorted(perms)})
        return grant

    def unshare_cube(self, cube: str, user: str) -> bool:
        found = self._cube_for(cube, "share", "unshare_cube")
        removed = self.vault.governance.revoke_grant(found.id, check_user_id(user))
        self._audit("unshare_cube", cube_id=found.id, detail={"user": user})
        return removed

    def cube_acl(self, cube: str) -> list[Grant]:
        found = self._cube_for(cube, "read", "cube_acl")
        return self.vault.governance.grants_for_cube(found.id)

    # --- policies ------------------------------------------------------------------------
    def cube_policy(self, cube: str) -> dict[str, Any]:
        """The cube's policy with defaults filled in: `pii` (store | mask | redact |
        reject), `ttl` (memory type -> seconds), `decay` (see operation/lifecycle)."""
        found = self._cube_for(cube, "read", "cube_policy")
        policy = self.vault.governance.get_policy(found.id)
        return {"pii": DEFAULT_PII_POLICY, "ttl": {}, "decay": {}, **policy}

    def set_cube_policy(self, cube: str, **changes: Any) -> dict[str, Any]:
        found = self._cube_for(cube, "share", "set_cube_policy")
        unknown = set(changes) - {"pii", "ttl", "decay"}
        if unknown:
            raise ValidationError(f"unknown policy field(s) {sorted(unknown)}; "
                                  "known: pii, ttl, decay")
        if "pii" in changes and changes["pii"] not in PII_POLICIES:
            raise ValidationError(f"pii policy must be one of {list(PII_POLICIES)}")
        if "ttl" in changes:
            from memosys.operation.lifecycle import check_ttl_policy

            changes["ttl"] = check_ttl_policy(changes["ttl"])
        if "decay" in changes:
            from memosys.operation.lifecycle import DecayPolicy

            changes["decay"] = DecayPolicy.from_dict(changes["decay"]).as_dict()
        # atomic: a concurrent change of another field (extraction rules) is kept
        self.vault.governance.update_policy(found.id, lambda policy: {**policy, **changes})
        self._audit("set_cube_policy", cube_id=found.id, detail={"fields": sorted(changes)})
        return self.cube_policy(found.id)

    def redact_for_export(self, items: Sequence[MemoryItem]) -> list[MemoryItem]:
        """Items as they may leave the installation (export, share to another store):
        sensitive text redacted where the cube's policy is `redact`, or `mask` when the
        actor lacks the `sensitive` scope."""
        out = []
        policies: dict[str, str] = {}
        privileged = self._actor.allows("sensitive")
        for item in items:
            if item.sensitivity:
                if item.cube_id not in policies:
                    policies[item.cube_id] = self._access.pii_policy(item.cube_id)
                policy = policies[item.cube_id]
                if policy == "redact" or (policy == "mask" and not privileged):
                    item = redact_item(item)
            out.append(item)
        return out

    def export_guard(self, cube: str) -> ExportGuard:
        """What an export of `cube` may contain, for the exchange code: the cube (NotFound
        unless readable), `filter(flt)` (hides others' private memories) and
        `redact(item)` (the cube's PII policy). Audited as an `export`."""
        found = self._cube_for(cube, "read", "export")
        self._audit("export", cube_id=found.id)
        return ExportGuard(found, self._access.restrict,
                           lambda item: self.redact_for_export([item])[0])

    # --- audit ---------------------------------------------------------------------------
    def _audit(self, op: str, *, cube_id: str | None = None, items: AuditItems = (),
               detail: dict[str, Any] | None = None, outcome: str = "ok") -> None:
        pairs = [(i.id, i.version) if isinstance(i, MemoryItem) else (str(i[0]), int(i[1]))
                 for i in items]
        if cube_id is None:
            cubes = {i.cube_id for i in items if isinstance(i, MemoryItem)}
            cube_id = cubes.pop() if len(cubes) == 1 else None
        self.vault.governance.append_audit([self._access.entry(
            op, outcome=outcome, cube_id=cube_id, items=pairs, detail=detail)])

    def record_audit(self, op: str, *, cube_id: str | None = None, items: AuditItems = (),
                     detail: dict[str, Any] | None = None) -> None:
        """Write an audit entry as the current actor, e.g. chat's
        `record_audit("chat.answer", items=used_memories, detail={"session": ...})`.
        `detail` must hold ids, counts and kinds only, never memory text."""
        self._audit(_text(op, "op"), cube_id=cube_id, items=list(items), detail=detail)

    def audit_log(self, *, cube: str | None = None, actor: str | None = None,
                  item_id: str | None = None, limit: int = 100, after_seq: int = 0,
                  newest_first: bool = True) -> list[AuditEntry]:
        """Audit entries (admins: all; others: their own actions on cubes they can read)."""
        cube_id = self._cube_for(cube, "read", "audit_log").id if cube else None
        if not self._access.unrestricted:
            actor = self._actor.user_id
        return self.vault.governance.audit_entries(
            after_seq=after_seq, limit=limit, cube_id=cube_id, actor=actor, item_id=item_id,
            newest_first=newest_first)

    def verify_audit(self) -> AuditVerification:
        """Recompute the hash chain over the whole log."""
        self._require_admin("verify_audit")
        store = self.vault.governance

        def entries() -> Iterable[AuditEntry]:
            seq = 0
            while batch := store.audit_entries(after_seq=seq, limit=5000):
                yield from batch
                seq = batch[-1].seq

        return verify_chain(entries())

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def lifecycle(self) -> Lifecycle:
        """States, TTL, decay, review queue and feedback kinds (operation/lifecycle)."""
        from memosys.operation.lifecycle import Lifecycle

        return Lifecycle(self)  # type: ignore[arg-type]


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty string")
    return value
