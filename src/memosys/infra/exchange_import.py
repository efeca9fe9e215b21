"""Import a MIP cube archive into this installation, atomically.

Three phases, and only the last writes:
1. read: every file is size-limited, hashed and checked against the manifest (and the
   signature), every line parsed and validated; histories must be consecutive and end
   in exactly the memory that memories.jsonl holds.
2. plan: the target cube (new, or an existing one under the chosen conflict mode), the
   id mapping, which versions each memory still lacks, embeddings (the archive's when the
   target uses the same embedder, else re-embedded here).
3. write: one `Vault.import_versions` transaction (creating the cube, or wiping it for
   `replace`, in that same transaction).
Any problem in phases 1-2 raises a typed error before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError as PydanticError

from memosys.errors import ArchiveError, ConflictError, NotFoundError, ValidationError
from memosys.infra.exchange_archive import ArchiveLimits, ArchiveReader
from memosys.infra.exchange_export import EMBEDDINGS, LIVE_IDS, MEMORIES, VERSIONS
from memosys.infra.exchange_signing import verify_manifest
from memosys.infra.exchange_tensors import (
    KINDS,
    check_member,
    install,
    is_derived,
    plan_derived,
    target_fingerprint,
)
from memosys.infra.vault.base import ImportedItem, VersionRecord
from memosys.system_extraction import adopt as adopt_rules
from memosys.system_extraction import from_archive as archive_rules
from memosys.types import CubeConfig, MemCube, MemoryItem, as_utc, new_id

if TYPE_CHECKING:
    from memosys.system import MemOS

OnConflict = Literal["merge", "skip", "replace"]
CONFLICT_MODES: tuple[str, ...] = ("merge", "skip", "replace")
_EMBED_BATCH = 64
_RECORD_KEYS = {"item_id", "version", "clock", "op", "at", "item"}


@dataclass
class ImportReport:
    cube: str
    cube_id: str
    action: str
    """created | merged | replaced | skipped"""
    memories_added: int = 0
    memories_updated: int = 0
    memories_unchanged: int = 0
    versions_added: int = 0
    reembedded: int = 0
    pruned: int = 0
    clock: int = 0
    """The target cube's clock afterwards."""
    source_clock: int = 0
    """The archive's `until`: the source clock this import brings the cube up to."""
    signed_by: str | None = None
    messages: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


@dataclass
class ParsedArchive:
    """An archive after phase 1: everything verified, nothing written."""

    manifest: dict[str, Any]
    header: MemCube
    memories: list[MemoryItem]
    records: dict[str, list[VersionRecord]]
    vectors: np.ndarray | None
    live_ids: list[str] | None
    signed_by: str | None
    tensors: dict[str, bytes] = field(default_factory=dict)
    """Activation cache / LoRA adapter files by the id of their record."""


def read_archive(
    path: str | Path,
    *,
    limits: ArchiveLimits | None = None,
    trusted_keys: list[Ed25519PublicKey] | None = None,
) -> ParsedArchive:
    """Phase 1: open, verify and parse an archive (also `memosys verify`)."""
    with ArchiveReader(path, limits) as reader:
        manifest = reader.manifest
        signed_by = verify_manifest(manifest, trusted_keys)
        try:
            header = MemCube.model_validate(manifest["cube"])
        except PydanticError as exc:
            raise ArchiveError(f"manifest.json: bad cube header: {exc.errors()[0]['msg']}") \
                from None
        memories = [_parse_item(MEMORIES, n, line) for n, line in reader.lines(MEMORIES)]
        records: dict[str, list[VersionRecord]] = {}
        for n, line in reader.lines(VERSIONS):
            record = _parse_record(n, line)
            records.setdefault(record.item.id, []).append(record)
        vectors = _parse_vectors(reader.read(EMBEDDINGS), manifest) \
            if EMBEDDINGS in manifest["files"] else None
        live_ids = None
        if manifest.get("live_ids"):
            if manifest["live_ids"] != LIVE_IDS:
                raise ArchiveError(f"unknown live id list {manifest['live_ids']!r}")
            live_ids = reader.read(LIVE_IDS).decode().split()
        by_id = {m.id: m for m in memories}
        tensors: dict[str, bytes] = {}
        for name in reader.names():
            if name in (MEMORIES, VERSIONS, EMBEDDINGS, LIVE_IDS):
                continue
            if not name.startswith(("activation/", "parametric/")):
                raise ArchiveError(f"unknown file {name!r} in the archive")
            data = reader.read(name)
            tensors[check_member(name, data, by_id)] = data
    for kind in ("activation", "parametric"):
        held = sum(by_id[r].kind.value == kind for r in tensors)
        if held != manifest["counts"][kind]:
            raise ArchiveError(f"the manifest counts {manifest['counts'][kind]} {kind} "
                               f"files, the archive holds {held}")
    _check_consistency(manifest, header, memories, records, vectors)
    return ParsedArchive(manifest, header, memories, records, vectors, live_ids, signed_by,
                         tensors)


def _parse_item(name: str, number: int, line: bytes) -> MemoryItem:
    try:
        return MemoryItem.model_validate_json(line)
    except PydanticError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "line"
        raise ArchiveError(f"{name} line {number}: {where}: {err['msg']}") from None


def _parse_record(number: int, line: bytes) -> VersionRecord:
    try:
        raw = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{VERSIONS} line {number}: not JSON ({exc})") from None
    if not isinstance(raw, dict) or set(raw) != _RECORD_KEYS:
        raise ArchiveError(f"{VERSIONS} line {number}: expected the keys {sorted(_RECORD_KEYS)}")
    item = _parse_item(VERSIONS, number, json.dumps(raw["item"]).encode())
    ok = (isinstance(raw["version"], int) and isinstance(raw["clock"], int)
          and isinstance(raw["op"], str) and 0 < len(raw["op"]) <= 64
          and isinstance(raw["at"], str) and raw["item_id"] == item.id
          and raw["version"] == item.version)
    if not ok:
        raise ArchiveError(f"{VERSIONS} line {number}: bad item_id, version, clock, op or at")
    try:
        at = as_utc(datetime.fromisoformat(raw["at"]))
    except ValueError:
        raise ArchiveError(f"{VERSIONS} line {number}: bad time {raw['at']!r}") from None
    return VersionRecord(item, raw["clock"], raw["op"], at)  # type: ignore[arg-type]


def _parse_vectors(data: bytes, manifest: dict[str, Any]) -> np.ndarray:
    try:
        arr = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArchiveError(f"{EMBEDDINGS} is not a readable .npy array: {exc}") from None
    dim = manifest["embedder"]["dim"]
    rows = manifest["counts"]["memories"]
    if arr.dtype != np.dtype("<f4") or arr.shape != (rows, dim):
        raise ArchiveError(f"{EMBEDDINGS} holds {arr.dtype} {arr.shape}; expected float32 "
                           f"({rows}, {dim})")
    if not np.all(np.isfinite(arr)):
        raise ArchiveError(f"{EMBEDDINGS} has NaN or infinite values")
    return arr


def _check_consistency(
    manifest: dict[str, Any],
    header: MemCube,
    memories: list[MemoryItem],
    records: dict[str, list[VersionRecord]],
    vectors: np.ndarray | None,
) -> None:
    counts, span = manifest["counts"], manifest["range"]
    if span["until"] != header.clock or span["since"] > span["until"]:
        raise ArchiveError("manifest.json: range does not match the cube's clock")
    if counts["memories"] != len(memories):
        raise ArchiveError(f"the manifest counts {counts['memories']} memories, "
                           f"{MEMORIES} holds {len(memories)}")
    total = sum(len(r) for r in records.values())
    if counts["versions"] != total:
        raise ArchiveError(f"the manifest counts {counts['versions']} versions, "
                           f"{VERSIONS} holds {total}")
    if counts["embeddings"] != (0 if vectors is None else len(vectors)):
        raise ArchiveError("the manifest's embedding count does not match embeddings.npy")
    ids = [m.id for m in memories]
    if len(set(ids)) != len(ids):
        raise ArchiveError(f"{MEMORIES} lists a memory twice")
    stray = set(records) - set(ids)
    if stray:
        raise ArchiveError(f"{VERSIONS} has versions of {sorted(stray)[0]}, which "
                           f"{MEMORIES} does not hold")
    for memory in memories:
        if memory.cube_id != header.id:
            raise ArchiveError(f"memory {memory.id} belongs to cube {memory.cube_id}, not the "
                               f"archive's cube {header.id}")
        history = sorted(records.get(memory.id, []), key=lambda r: r.item.version)
        if not history:
            raise ArchiveError(f"memory {memory.id} has no versions in {VERSIONS}")
        first = history[0].item.version
        if span["since"] == 0 and first != 1:
            raise ArchiveError(f"memory {memory.id}: the history starts at version {first}")
        for offset, record in enumerate(history):
            if record.item.version != first + offset:
                raise ArchiveError(f"memory {memory.id}: versions are not consecutive")
            if not span["since"] < record.clock <= span["until"]:
                raise ArchiveError(f"memory {memory.id}: version {record.item.version} has "
                                   f"clock {record.clock}, outside the archive's range")
            if record.item.cube_id != header.id:
                raise ArchiveError(f"memory {memory.id}: a version names another cube")
        last = history[-1].item
        if last.model_dump(exclude={"stats"}) != memory.model_dump(exclude={"stats"}):
            raise ArchiveError(f"memory {memory.id}: its last version differs from the "
                               f"memory in {MEMORIES}")
        records[memory.id] = history


def remapped_id(target_cube_id: str, source_id: str) -> str:
    """A stable id for a source memory in a target cube: importing (or pulling) the same
    archive into the same cube again finds the same memories. A UUIDv7 source id keeps
    its time bits, so remapped ids still sort by creation time."""
    digest = int.from_bytes(hashlib.sha256(f"{target_cube_id}\0{source_id}".encode())
                            .digest()[:16], "big")
    try:
        parsed = uuid.UUID(source_id)
        ms = parsed.int >> 80 if parsed.version == 7 else digest >> 80
    except ValueError:
        ms = digest >> 80
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (digest >> 64 & 0xFFF) << 64
    value |= 0b10 << 62 | (digest & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def import_archive(
    mos: MemOS,
    source: str | Path | ParsedArchive,
    *,
    name: str | None = None,
    on_conflict: OnConflict | None = None,
    keep_ids: bool = False,
    trusted_keys: list[Ed25519PublicKey] | None = None,
    limits: ArchiveLimits | None = None,
    prune: bool = False,
    model_fingerprint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import an archive as cube `name` (default: the archive's cube name).

    If that cube exists, `on_conflict` decides: "merge" appends the versions each memory
    lacks (newer versions win; memories the cube lacks are added), "skip" leaves the cube
    as it is, "replace" swaps its content for the archive's; None refuses (ConflictError).
    `keep_ids` keeps the archive's cube and memory ids (else stable new ones).
    `prune` (subscriptions): after a delta, purge memories the source no longer holds, and
    refuse (ConflictError) if a memory was changed locally: the copy is read-only.
    Activation caches and LoRA adapters are kept when ids are kept and the target's model
    (`model_fingerprint`, default: the bound local model's) is the one they were built
    for; otherwise they are dropped, listed in `report.dropped` (exchange_tensors)."""
    parsed = source if isinstance(source, ParsedArchive) else read_archive(
        source, limits=limits, trusted_keys=trusted_keys)
    if on_conflict is not None and on_conflict not in CONFLICT_MODES:
        raise ValidationError(f"on_conflict must be one of {CONFLICT_MODES}, got {on_conflict!r}")
    header = parsed.header
    rules = archive_rules(parsed.manifest.get("extraction"))
    target_name = name or header.name
    try:
        existing: MemCube | None = mos.vault.get_cube(target_name)
    except NotFoundError:
        existing = None
    report = ImportReport(cube=target_name, cube_id="", action="created",
                          signed_by=parsed.signed_by,
                          source_clock=parsed.manifest["range"]["until"])
    new_cube: MemCube | None = None
    if existing is not None:
        if on_conflict is None:
            raise ConflictError(
                f"a cube named {target_name!r} exists: choose what to do with "
                "--on-conflict merge|skip|replace, or import under another name with --as")
        report.cube_id = existing.id
        if on_conflict == "skip":
            report.action = "skipped"
            report.memories_unchanged = len(parsed.memories)
            report.messages.append(f"cube {target_name!r} exists; left unchanged (skip)")
            return report
        cube = mos.get_cube(existing.id, need="write")  # and the target's embedder
        if on_conflict == "replace":
            mos._access.require_cube(cube, "delete", op="import", name=target_name)
        report.action = "merged" if on_conflict == "merge" else "replaced"
    else:
        from memosys.types import validated

        if keep_ids:
            try:
                taken = mos.vault.get_cube(header.id)
            except NotFoundError:
                pass
            else:
                raise ConflictError(
                    f"cube id {header.id} is already used here (by cube {taken.name!r}); "
                    "import without --keep-ids, or into that cube with --as")
        access = mos._access
        owner = access.check_create_cube(header.owner if access.unrestricted else None)
        cube = new_cube = validated(
            MemCube,
            id=header.id if keep_ids else new_id(),
            name=target_name,
            owner=owner,
            description=header.description,
            created_at=header.created_at,
            config=CubeConfig(embedder_id=mos.embedder.id, embedding_dim=mos.embedder.dim,
                              model_fingerprint=header.config.model_fingerprint),
        )
        report.cube_id = cube.id
    wipe = report.action == "replaced"
    derived = [m for m in parsed.memories if is_derived(m)]
    drop: set[str] = set()
    if derived:
        fp = model_fingerprint if model_fingerprint is not None or not keep_ids \
            else target_fingerprint(mos)
        drop, why = plan_derived(derived, parsed.tensors, keep_ids=keep_ids,
                                 same_cube=cube.id == header.id, fingerprint=fp)
        report.dropped.extend(why)
    entries, to_embed = _plan(mos, parsed, cube, keep_ids, merge=report.action == "merged",
                              report=report, skip=drop, strict=prune)
    _embed(mos, entries, to_embed, progress, report, parsed)
    report.clock = mos.vault.import_versions(cube.id, entries, wipe=wipe, new_cube=new_cube)
    _install_tensors(mos, parsed, cube, drop, report)
    if rules is not None and new_cube is not None:
        adopt_rules(mos, cube.id, rules)
        report.messages.append(f"extraction rules adopted: {len(rules.rules)} rule(s), "
                               f"{len(rules.categories)} categories")
    elif rules is not None:
        report.messages.append("the archive's extraction rules were not applied: "
                               f"cube {target_name!r} keeps its own")
    mos.record_audit("import", cube_id=cube.id, detail={
        "action": report.action, "added": report.memories_added,
        "updated": report.memories_updated, "versions": report.versions_added,
        "signed_by": report.signed_by})
    if prune and parsed.live_ids is not None and report.action == "merged":
        report.pruned = _prune(mos, parsed, cube, keep_ids)
    return report


def _plan(
    mos: MemOS,
    parsed: ParsedArchive,
    cube: MemCube,
    keep_ids: bool,
    *,
    merge: bool,
    report: ImportReport,
    skip: set[str],
    strict: bool = False,
) -> tuple[list[ImportedItem], list[tuple[int, int]]]:
    """The vault batch, plus (entry index, archive row) pairs still needing a vector."""
    idmap = {m.id: m.id if keep_ids else remapped_id(cube.id, m.id) for m in parsed.memories}
    held = mos.vault.get_many(list(idmap.values()))
    elsewhere = [i for i, item in held.items() if item.cube_id != cube.id]
    if elsewhere:
        raise ConflictError(f"memory id {elsewhere[0]} already exists in another cube of this "
                            "installation; import without --keep-ids")
    if not merge:
        held = {}
    same_embedder = (parsed.vectors is not None
                     and parsed.manifest["embedder"]["id"] == mos.embedder.id
                     and parsed.manifest["embedder"]["dim"] == mos.embedder.dim)
    entries: list[ImportedItem] = []
    to_embed: list[tuple[int, int]] = []
    for row, memory in enumerate(parsed.memories):
        if memory.id in skip:
            continue
        target_id = idmap[memory.id]
        current = held.get(target_id)
        history = _labelled(mos, cube.id, [_moved(r, cube.id, idmap)
                                           for r in parsed.records[memory.id]],
                            held_version=current.version if current else 0)
        if current is None:
            expected = None
            if history[0].item.version != 1:
                raise ConflictError(
                    f"the archive holds memory {memory.id} from version "
                    f"{history[0].item.version} on, but cube {cube.name!r} does not hold its "
                    "earlier versions: import the full archive first")
            report.memories_added += 1
        else:
            if strict:
                _check_untouched(current, history)
            history = [r for r in history if r.item.version > current.version]
            if not history:
                report.memories_unchanged += 1
                continue
            if history[0].item.version != current.version + 1:
                raise ConflictError(
                    f"memory {target_id} is at version {current.version}; the archive starts "
                    f"at {history[0].item.version}: import the versions in between first")
            expected = current.version
            report.memories_updated += 1
        needs_vector = current is None or current.text != history[-1].item.text
        vector = parsed.vectors[row] if needs_vector and same_embedder else None  # type: ignore[index]
        if needs_vector and vector is None:
            to_embed.append((len(entries), row))
        stats = memory.stats if current is None else None
        entries.append(ImportedItem(history, vector, stats, expected))
        report.versions_added += len(history)
    return entries, to_embed


def _labelled(mos: MemOS, cube_id: str, records: list[VersionRecord],
              held_version: int = 0) -> list[VersionRecord]:
    """Sensitive data is labelled (or refused, per the target cube's policy) as on `add`;
    the cube's extraction rules apply to the versions it does not hold yet."""
    old = [r.item for r in records if r.item.version <= held_version]
    items = [*mos._access.label(cube_id, old, rules=False),
             *mos._access.label(cube_id, [r.item for r in records
                                          if r.item.version > held_version])]
    return [VersionRecord(i, r.clock, r.op, r.at) for i, r in zip(items, records, strict=True)]


def _check_untouched(current: MemoryItem, history: list[VersionRecord]) -> None:
    """A subscription's copy must not have changed locally: its version must be one the
    source wrote, with the source's content (else merging would silently diverge)."""
    last = history[-1].item.version
    same = next((r.item for r in history if r.item.version == current.version), None)
    if current.version > last or (same is not None and same.model_dump(exclude={"stats"})
                                  != current.model_dump(exclude={"stats"})):
        raise ConflictError(
            f"memory {current.id} was changed in this installation (version "
            f"{current.version}); a subscribed cube is read-only here, its changes come "
            "from the publisher")


def _moved(record: VersionRecord, cube_id: str, idmap: dict[str, str]) -> VersionRecord:
    item = record.item
    update: dict[str, Any] = {"cube_id": cube_id, "id": idmap[item.id]}
    if item.supersedes in idmap:
        update["supersedes"] = idmap[item.supersedes]
    if any(d in idmap for d in item.derived_from):
        update["derived_from"] = [idmap.get(d, d) for d in item.derived_from]
    return VersionRecord(item.model_copy(update=update), record.clock, record.op, record.at)


def _embed(
    mos: MemOS,
    entries: list[ImportedItem],
    to_embed: list[tuple[int, int]],
    progress: Callable[[int, int], None] | None,
    report: ImportReport,
    parsed: ParsedArchive,
) -> None:
    """Embed the latest text of the entries that still lack a vector, in place."""
    if not to_embed:
        return
    source = parsed.manifest["embedder"]
    if parsed.vectors is None:
        report.messages.append(f"the archive has no embeddings: embedded {len(to_embed)} "
                               f"memories with {mos.embedder.id}")
    else:
        report.messages.append(
            f"re-embedded {len(to_embed)} memories with {mos.embedder.id} "
            f"(dim {mos.embedder.dim}); the archive used {source['id']} (dim {source['dim']})")
    report.reembedded = len(to_embed)
    for start in range(0, len(to_embed), _EMBED_BATCH):
        batch = [i for i, _ in to_embed[start:start + _EMBED_BATCH]]
        vectors = mos.embedder.embed([entries[i].versions[-1].item.text for i in batch])
        for i, vec in zip(batch, vectors, strict=True):
            entries[i] = replace(entries[i], vector=vec)
        if progress:
            progress(min(start + _EMBED_BATCH, len(to_embed)), len(to_embed))


def _install_tensors(
    mos: MemOS, parsed: ParsedArchive, cube: MemCube, drop: set[str], report: ImportReport
) -> None:
    """Write the kept cache/adapter files where the target's stores look (ids are kept
    here, see exchange_tensors.plan_derived)."""
    by_id = {m.id: m for m in parsed.memories}
    counts: dict[str, int] = {}
    for record_id, data in parsed.tensors.items():
        if record_id in drop:
            continue
        record = by_id[record_id].model_copy(update={"cube_id": cube.id})
        install(mos, record, data)
        label = KINDS[record.kind].label
        counts[label] = counts.get(label, 0) + 1
    report.messages.extend(f"installed {n} {label}(s)" for label, n in counts.items())


def _prune(mos: MemOS, parsed: ParsedArchive, cube: MemCube, keep_ids: bool) -> int:
    """Purge the cube's memories whose source memory is gone (purged at the source)."""
    from memosys.infra.vault.base import ItemFilter

    live = {i if keep_ids else remapped_id(cube.id, i) for i in parsed.live_ids or ()}
    flt = ItemFilter(cube_ids=(cube.id,), states=())
    held: list[MemoryItem] = []
    while batch := mos.vault.list_items(flt, limit=1000, offset=len(held)):
        held.extend(batch)
    gone = [i.id for i in held if i.id not in live]
    return mos.vault.purge(gone) if gone else 0
