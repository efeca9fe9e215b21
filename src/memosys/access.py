"""The one permission check point: what the runtime's current actor may see and do.

`MemOS` builds one `Access` per actor view and calls it from every Memory API method, so
Python, CLI, REST and MCP all get the same answers:

* a cube or memory the actor may not read is `NotFoundError` with the same message an
  absent one gets (existence is never revealed);
* something visible that the actor may not change is `PermissionDeniedError`;
* a `private` memory is visible only to its owner (and admins); a `public` one to every
  user, even without access to its cube;
* sensitive text is masked for actors without the `sensitive` scope when the cube's
  policy is `mask` or `redact` (the memory's own owner always sees it);
* denied and hidden attempts are written to the audit log too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from memosys.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    SensitiveDataError,
)
from memosys.infra.governance import (
    LOCAL_ADMIN,
    PERMISSIONS,
    ROLE_OWN_PERMISSIONS,
    NewAuditEntry,
    Principal,
)
from memosys.infra.pii import labels, mask_text
from memosys.infra.prompt_guard import INJECTION_LABEL, injection_markers
from memosys.infra.vault.base import ItemFilter
from memosys.types import MemCube, MemoryItem, Visibility

if TYPE_CHECKING:
    from memosys.system import MemOS

PII_POLICIES = ("store", "mask", "redact", "reject")
DEFAULT_PII_POLICY = "mask"


class Access:
    def __init__(self, mos: MemOS, principal: Principal) -> None:
        self.mos = mos
        self.principal = principal
        self.unrestricted = principal.is_admin
        """Admins (the local installation admin included) skip every lookup."""

    # --- identity ------------------------------------------------------------------------
    def check_live(self) -> None:
        """A key revoked (or a user removed) after this view was made stops it now."""
        p = self.principal
        if p is LOCAL_ADMIN or p.key_id is None:
            return
        store = self.mos.vault.governance
        try:
            key = store.get_key(p.key_id)
            store.get_user(p.user_id)
        except NotFoundError:
            raise AuthenticationError("API key revoked or unknown") from None
        if not key.active or key.user_id != p.user_id:
            raise AuthenticationError("API key revoked or unknown")

    # --- cubes ---------------------------------------------------------------------------
    def _grants(self) -> dict[str, frozenset[str]]:
        return self.mos.vault.governance.grants_for_user(self.principal.user_id)

    def permissions(self, cube: MemCube, grants: dict[str, frozenset[str]] | None = None
                    ) -> frozenset[str]:
        p = self.principal
        if self.unrestricted:
            return frozenset(PERMISSIONS)
        if cube.owner is not None and cube.owner == p.user_id:
            base = ROLE_OWN_PERMISSIONS.get(p.role, frozenset())
        else:
            base = (grants if grants is not None else self._grants()).get(cube.id, frozenset())
        if p.role == "reader":
            base &= {"read"}
        return frozenset(perm for perm in base if p.allows(perm))

    def require_cube(self, cube: MemCube, perm: str, *, op: str, name: str | None = None,
                     ) -> None:
        """NotFound unless the cube is readable; PermissionDenied without `perm`."""
        if self.unrestricted:
            return
        self.check_live()
        perms = self.permissions(cube)
        if "read" not in perms:
            self.audit_refusal(op, "not_found", detail={"cube": name or cube.id})
            raise NotFoundError(f"no cube {name or cube.id!r}")
        if perm not in perms:
            self.audit_refusal(op, "denied", cube_id=cube.id, detail={"needs": perm})
            raise PermissionDeniedError(
                f"{self.principal.user_id} may not {perm} in cube {cube.name!r}")

    def split_cubes(self, cubes: Iterable[MemCube]) -> tuple[list[MemCube], list[MemCube]]:
        """(readable cubes, other cubes — only their public memories are visible)."""
        cubes = list(cubes)
        if self.unrestricted:
            return cubes, []
        self.check_live()
        grants = self._grants()
        readable, others = [], []
        for c in cubes:
            (readable if "read" in self.permissions(c, grants) else others).append(c)
        return readable, others

    def check_create_cube(self, owner: str | None) -> str | None:
        """The owner a new cube gets: the actor itself unless an admin names another."""
        p = self.principal
        if self.unrestricted:
            return owner
        self.check_live()
        if p.role == "reader" or not p.allows("write"):
            self.audit_refusal("create_cube", "denied", detail={"needs": "write"})
            raise PermissionDeniedError(f"{p.user_id} may not create cubes")
        if owner is not None and owner != p.user_id:
            self.audit_refusal("create_cube", "denied", detail={"needs": "admin"})
            raise PermissionDeniedError("only an admin may create a cube for another user")
        return p.user_id

    # --- memories ------------------------------------------------------------------------
    def can_see(self, item: MemoryItem, cube: MemCube | None = None) -> bool:
        if self.unrestricted:
            return True
        if item.visibility == Visibility.PUBLIC:
            return True
        if item.visibility == Visibility.PRIVATE and item.owner != self.principal.user_id:
            return False
        found = cube or self.mos.vault.get_cube(item.cube_id)
        return "read" in self.permissions(found)

    def visible_item(self, item_id: str, op: str) -> MemoryItem:
        """The current item if the actor may see it, else NotFoundError (same message)."""
        found = self.mos.vault.get_many([item_id]).get(item_id)
        if not self.unrestricted:
            self.check_live()
        if found is None or not self.can_see(found):
            if found is not None:
                self.audit_refusal(op, "not_found", items=((item_id, 0),))
            raise NotFoundError(f"no memory {item_id!r}")
        return found

    def require_item(self, item: MemoryItem, perm: str, op: str) -> None:
        if self.unrestricted:
            return
        cube = self.mos.vault.get_cube(item.cube_id)
        perms = self.permissions(cube)
        if perm not in perms:
            self.audit_refusal(op, "denied", cube_id=cube.id,
                               items=((item.id, item.version),), detail={"needs": perm})
            raise PermissionDeniedError(
                f"{self.principal.user_id} may not {perm} memory {item.id}")

    def owner_for_new(self, owner: str | None) -> str | None:
        p = self.principal
        if self.unrestricted:
            return owner
        if owner is not None and owner != p.user_id:
            raise PermissionDeniedError("only an admin may add memories owned by another user")
        return p.user_id

    def restrict(self, flt: ItemFilter, others: Sequence[MemCube] = ()) -> ItemFilter:
        if self.unrestricted:
            return flt
        return replace(flt, viewer=self.principal.user_id,
                       public_only_cubes=tuple(c.id for c in others))

    # --- sensitive data ------------------------------------------------------------------
    def pii_policy(self, cube_id: str) -> str:
        return str(self.mos.vault.governance.get_policy(cube_id).get("pii", DEFAULT_PII_POLICY))

    def label(self, cube_id: str, items: list[MemoryItem], *, rules: bool = True
              ) -> list[MemoryItem]:
        """Items to write, with detected sensitive data labelled in `sensitivity`;
        SensitiveDataError where the cube's policy is `reject` (nothing is written).
        Every write passes here, so the cube's "never remember" rules are applied here
        too (`rules`: the text is new; see memosys.system_extraction)."""
        if rules:
            from memosys.system_extraction import enforce

            items = enforce(self.mos, self, cube_id, items)
        out: list[MemoryItem] = []
        policy: str | None = None
        for item in items:
            found = labels(item.text)
            security = [INJECTION_LABEL] if injection_markers(item.text) else []
            if security and INJECTION_LABEL not in item.sensitivity:
                item = item.model_copy(update={
                    "sensitivity": sorted({*item.sensitivity, INJECTION_LABEL})})
            if found:
                policy = policy or self.pii_policy(cube_id)
                if policy == "reject":
                    self.audit_refusal("write", "denied", cube_id=cube_id,
                                       detail={"sensitive": found})
                    raise SensitiveDataError(
                        f"cube policy rejects sensitive data; the text contains {found}")
                merged = sorted(set(item.sensitivity) | set(found))
                if merged != item.sensitivity:
                    item = item.model_copy(update={"sensitivity": merged})
            out.append(item)
        return out

    def present(self, items: Sequence[MemoryItem]) -> list[MemoryItem]:
        """Items as this actor may see them: sensitive text masked where policy says."""
        p = self.principal
        if p.allows("sensitive") or not any(i.sensitivity for i in items):
            return list(items)
        policies: dict[str, str] = {}
        out = []
        for item in items:
            if item.sensitivity and item.owner != p.user_id:
                if item.cube_id not in policies:
                    policies[item.cube_id] = self.pii_policy(item.cube_id)
                if policies[item.cube_id] in ("mask", "redact"):
                    item = item.model_copy(update={"text": mask_text(item.text)})
            out.append(item)
        return out

    # --- audit ---------------------------------------------------------------------------
    def entry(self, op: str, *, outcome: str = "ok", cube_id: str | None = None,
              items: Iterable[tuple[str, int]] = (), detail: dict[str, Any] | None = None,
              ) -> NewAuditEntry:
        p = self.principal
        return NewAuditEntry(actor=p.user_id, op=op, outcome=outcome, cube_id=cube_id,
                             items=tuple(items), detail=dict(detail or {}), agent=p.agent,
                             key_id=p.key_id)

    def audit_refusal(self, op: str, outcome: str, *, cube_id: str | None = None,
                      items: Iterable[tuple[str, int]] = (),
                      detail: dict[str, Any] | None = None) -> None:
        self.mos.vault.governance.append_audit(
            [self.entry(op, outcome=outcome, cube_id=cube_id, items=items, detail=detail)])
