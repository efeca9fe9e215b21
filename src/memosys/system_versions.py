"""The Memory API's cube versions (snapshots, cube rollback) and statistics, and the write
helpers every optimistic write of the runtime shares (retries with randomised backoff, the
fields a rollback restores). A part of `MemOS` (memosys.system)."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from memosys.arg_checks import int_arg, text_arg
from memosys.errors import ConflictError, ValidationError
from memosys.infra.vault.base import ItemFilter, Snapshot
from memosys.types import MemoryItem, MemoryState, MemoryType

if TYPE_CHECKING:
    from memosys.system import MemOS

RETRIES = 12
UPDATABLE = {
    "text", "memory_type", "tags", "valid_from", "valid_to", "visibility", "state",
    "metadata", "owner", "sensitivity",
}


def backoff(attempt: int) -> None:
    """Randomised wait so writers that collided do not collide again in lockstep."""
    time.sleep(random.uniform(0, 0.005 * 2**attempt))


def restorable(item: MemoryItem) -> dict[str, Any]:
    """The fields a rollback restores: everything but identity, stats and bookkeeping."""
    return item.model_dump(
        include=UPDATABLE | {"source", "supersedes", "derived_from"}
    ) | {"state": item.state}


class CubeVersionsAPI:
    """Snapshots, cube rollback and statistics (mixed into MemOS)."""

    def snapshot(self: MemOS, cube: str, label: str = "") -> Snapshot:
        found = self.vault.get_cube(text_arg("cube", cube))
        self._access.require_cube(found, "write", op="snapshot", name=cube)
        snap = self.vault.create_snapshot(found.id, label)
        self._audit("snapshot", cube_id=found.id, detail={"clock": snap.clock})
        return snap

    def snapshots(self: MemOS, cube: str) -> list[Snapshot]:
        found = self.vault.get_cube(text_arg("cube", cube))
        self._access.require_cube(found, "read", op="snapshots", name=cube)
        return self.vault.list_snapshots(found.id)

    def rollback_cube(self: MemOS, cube: str, snapshot: Snapshot | int) -> list[MemoryItem]:
        """Return every memory of the cube to its state at the snapshot, as new versions
        (so this rollback can itself be rolled back). Purged memories stay purged."""
        found = self.get_cube(cube, need="write")
        if isinstance(snapshot, Snapshot):
            if snapshot.cube_id != found.id:
                raise ValidationError("that snapshot belongs to another cube")
            clock = snapshot.clock
        else:
            clock = int_arg("snapshot", snapshot, 0, None)
        embedded: dict[str, np.ndarray] = {}
        for attempt in range(RETRIES):
            writes = []
            for change in self.vault.changes_since(found.id, clock):
                if not self._access.can_see(change.current, found):
                    continue  # others' private memories are not the actor's to restore
                if change.then is None:
                    if change.current.state == MemoryState.DELETED:
                        continue
                    target = {"state": MemoryState.DELETED}
                else:
                    target = restorable(change.then)
                    if target == restorable(change.current):
                        continue  # changed and changed back: nothing to restore
                writes.append(
                    self._next_version(change.current, target, "rollback_cube", embedded)
                )
            try:
                stored = self.vault.commit(found.id, writes)
            except ConflictError:
                backoff(attempt)
                continue
            self._audit("rollback_cube", cube_id=found.id, items=stored,
                        detail={"clock": clock})
            return self._access.present(stored)
        raise ConflictError(f"cube {found.name} kept changing; gave up after {RETRIES} tries")

    # --- statistics ------------------------------------------------------------------
    def stats(self: MemOS, cube: str | None = None) -> dict[str, Any]:
        if cube:
            found = self.vault.get_cube(text_arg("cube", cube))
            self._access.require_cube(found, "read", op="stats", name=cube)
            cubes = [found]
        else:
            cubes = self.list_cubes()
        out: dict[str, Any] = {"cubes": []}
        restrict = self._access.restrict  # others' private memories are not counted
        for c in cubes:
            by_state = {
                s.value: self.vault.count(restrict(ItemFilter(cube_ids=(c.id,), states=(s,))))
                for s in MemoryState
            }
            by_type = {
                t.value: n
                for t in MemoryType
                if (n := self.vault.count(restrict(ItemFilter(cube_ids=(c.id,),
                                                              memory_types=(t,)))))
            }
            out["cubes"].append({
                "id": c.id, "name": c.name, "owner": c.owner, "clock": c.clock,
                "embedder": c.config.embedder_id, "dim": c.config.embedding_dim,
                "items": sum(by_state.values()), "by_state": by_state, "by_type": by_type,
            })
        return out
