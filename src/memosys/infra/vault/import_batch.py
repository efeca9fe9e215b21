"""Backend-neutral checks and clock mapping for `Vault.import_versions`.

Both backends run these inside their import transaction, so a batch is refused whole
before a row is written, and the clock mapping is computed under the cube's lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from memosys.errors import ValidationError
from memosys.infra.vault.base import ImportedItem
from memosys.types import MemCube


def check_batch(
    cube_id: str, batch: Sequence[ImportedItem], new_cube: MemCube | None = None
) -> None:
    """Every entry: one item id, consecutive versions from where the cube stands, records
    of this cube, positive clocks, the item's version field matching its record."""
    if new_cube is not None and new_cube.id != cube_id:
        raise ValidationError(f"the new cube's id {new_cube.id} is not {cube_id}")
    seen: set[str] = set()
    for entry in batch:
        if not entry.versions:
            raise ValidationError("an imported item has no versions")
        item_id = entry.versions[0].item.id
        if item_id in seen:
            raise ValidationError(f"memory {item_id} appears twice in one import")
        seen.add(item_id)
        start = 1 if entry.expected_version is None else entry.expected_version + 1
        for offset, record in enumerate(entry.versions):
            item = record.item
            if item.id != item_id:
                raise ValidationError(f"versions of {item_id} include memory {item.id}")
            if item.cube_id != cube_id:
                raise ValidationError(f"memory {item.id} belongs to cube {item.cube_id}, "
                                      f"not {cube_id}")
            if item.version != start + offset:
                raise ValidationError(
                    f"memory {item_id}: version {item.version} where {start + offset} "
                    "was expected (versions must be consecutive)"
                )
            if record.clock < 1:
                raise ValidationError(f"memory {item_id}: clock {record.clock} is not positive")
        if entry.expected_version is None and entry.vector is None:
            raise ValidationError(f"new memory {item_id} needs an embedding")


def clock_map(batch: Sequence[ImportedItem], cube_clock: int, wiped: bool) -> dict[int, int]:
    """Source clock -> this cube's clock. A fresh cube keeps the source's clocks; otherwise
    they are renumbered densely after `cube_clock`, order preserved."""
    clocks = sorted({r.clock for entry in batch for r in entry.versions})
    if cube_clock == 0 and not wiped:
        return {c: c for c in clocks}
    return {c: cube_clock + rank for rank, c in enumerate(clocks, start=1)}
