"""Builders shared by the exchange (MIP) tests."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from memosys.infra.vault.base import ItemFilter
from memosys.system import MemOS


def fill_source(mos: MemOS, cube: str = "notes") -> dict[str, str]:
    """A cube with edits, a delete, tags, provenance and event times; returns key ids."""
    from datetime import UTC, datetime

    mos.create_cube(cube, owner="alice", description="Alice's notes")
    [tea] = mos.add(cube, "Alice likes green tea", tags=["drink"], user="alice",
                    memory_type="preference")
    [paris] = mos.add(cube, "Alice moved to Paris in 2021", user="alice", memory_type="event",
                      valid_from=datetime(2021, 5, 1, tzinfo=UTC))
    mos.add(cube, messages=[{"role": "user", "content": "I adopted a cat named Miso",
                             "name": "Alice", "id": "m1"}], session="s1", user="alice")
    [gone] = mos.add(cube, "Temporary note to delete", metadata={"k": [1, 2]})
    mos.update(tea.id, text="Alice likes jasmine tea")
    mos.update(tea.id, tags=["drink", "favourite"])
    mos.delete(gone.id)
    mos.feedback(paris.id, 1.0)
    return {"tea": tea.id, "paris": paris.id, "gone": gone.id}


def state(mos: MemOS) -> dict[str, Any]:
    """Everything an import could touch: cubes, items (any state, with stats), every
    version record, stored vectors."""
    cubes = sorted((c.model_dump() for c in mos.vault.list_cubes()), key=lambda c: c["id"])
    items: list[Any] = []
    for cube in cubes:
        flt = ItemFilter(cube_ids=(cube["id"],), states=())
        found = mos.vault.list_items(flt, limit=10_000)
        items.extend(sorted((i.model_dump() for i in found), key=lambda i: i["id"]))
    ids = [i["id"] for i in items]
    histories = {i: [(r.item.model_dump(), r.clock, r.op, r.at) for r in mos.vault.history(i)]
                 for i in ids}
    vectors = {k: v.tobytes() for k, v in mos.vault.vectors(ids).items()}
    return {"cubes": cubes, "items": items, "histories": histories, "vectors": vectors}


def rewrite(src: Path, dst: Path, *, replace: dict[str, bytes] | None = None,
            add: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Copy an archive, swapping, adding or dropping members (names may be hostile)."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = replace.get(info.filename, zin.read(info))
            zout.writestr(info.filename, data)
        for name, data in add.items():
            zout.writestr(name, data)
    return dst


def manifest_of(path: Path) -> dict[str, Any]:
    import json

    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("manifest.json"))  # type: ignore[no-any-return]


def unit(vec: np.ndarray) -> np.ndarray:
    return vec / np.linalg.norm(vec)
