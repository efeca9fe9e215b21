"""Export a cube (whole, as of a clock, or only what changed after a clock) as a MIP file.

The archive is a consistent picture as of `until` (default: the cube's clock when the
export starts): version histories are immutable, so cutting each one at `until` gives
exactly the cube's state then, even while writers keep going.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from memosys.errors import PermissionDeniedError, ValidationError
from memosys.infra.exchange_archive import FORMAT, FORMAT_VERSION, ArchiveWriter
from memosys.infra.exchange_signing import key_id, sign_manifest
from memosys.infra.exchange_tensors import export_files, is_derived
from memosys.infra.pii import redact_item
from memosys.infra.vault.base import ItemFilter, VersionRecord
from memosys.system_extraction import for_archive as extraction_rules
from memosys.types import MemCube, MemoryItem

if TYPE_CHECKING:
    from memosys.system import MemOS
    from memosys.system_governance import ExportGuard

MEMORIES = "memories.jsonl"
VERSIONS = "versions.jsonl"
EMBEDDINGS = "embeddings.npy"
LIVE_IDS = "live_ids.txt"
_PAGE = 1000
_EMBED_BATCH = 64

Redactor = Callable[[MemoryItem], MemoryItem]
"""Returns the item as it may leave the installation (sensitive spans masked)."""


@dataclass
class ExportReport:
    path: Path
    cube: str
    memories: int
    versions: int
    embeddings: int
    since: int
    until: int
    signed_by: str | None = None
    redacted: int = 0
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Exported:
    item: MemoryItem
    """As of `until`, with the current usage statistics."""
    records: list[VersionRecord]
    """The version records inside (since, until]."""


def generator() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"memosys {version('memosys')}"
    except PackageNotFoundError:
        return "memosys"


def record_json(record: VersionRecord) -> dict[str, Any]:
    return {
        "item_id": record.item.id,
        "version": record.item.version,
        "clock": record.clock,
        "op": record.op,
        "at": record.at.isoformat(),
        "item": record.item.model_dump(mode="json", exclude={"stats"}),
    }


def export_cube(
    mos: MemOS,
    cube: str,
    path: str | Path,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    include_embeddings: bool = True,
    since: int = 0,
    until: int | None = None,
    redact: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Write `cube` to `path`, as the runtime's actor sees it: it needs read access, and
    memories it may not see (others' private ones) stay out. `since` > 0 makes a delta
    holding only versions written after that clock (plus the ids still alive, so purges
    travel too). `redact` (default): every memory labelled sensitive leaves with those
    spans redacted; `redact=False` needs the `sensitive` scope and still redacts where the
    cube's policy is `redact`."""
    guard = mos.export_guard(cube)  # NotFound unless readable; audited as `export`
    found = guard.cube
    redactor = redactor_for(mos, guard, redact)
    until = found.clock if until is None else until
    if not 0 <= since <= until <= found.clock:
        raise ValidationError(f"need 0 <= since <= until <= {found.clock} (the cube's clock); "
                              f"got since={since}, until={until}")
    exported, live = _collect(mos, guard, since, until, progress)
    exported, redacted, withheld = _redact(exported, redactor)
    messages: list[str] = []
    leave_out, tensor_files, fingerprints = export_files(
        mos, [e.item for e in exported], withheld | _withheld_sources(mos, exported, live),
        messages)
    exported = [e for e in exported if e.item.id not in leave_out]
    policy = "all-sensitive" if redact else f"cube:{mos.cube_policy(found.id)['pii']}"
    vectors = _vectors(mos, found, exported, messages) if include_embeddings else None
    writer = ArchiveWriter(path)
    try:
        writer.add(MEMORIES, _jsonl(e.item.model_dump(mode="json") for e in exported))
        writer.add(VERSIONS, _jsonl(record_json(r) for e in exported for r in e.records))
        if vectors is not None:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, vectors, allow_pickle=False)
            writer.add(EMBEDDINGS, buf.getvalue())
        if since > 0:
            writer.add(LIVE_IDS, "".join(f"{i}\n" for i in live).encode())
        for member, file in tensor_files:
            writer.add(member, _file_chunks(file))
        header = found.model_copy(update={"clock": until}).model_dump(mode="json")
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(),
            "generator": generator(),
            "cube": header,
            "embedder": {"id": found.config.embedder_id, "dim": found.config.embedding_dim},
            "model_fingerprints": sorted(fingerprints | ({found.config.model_fingerprint}
                                                         if found.config.model_fingerprint
                                                         else set())),
            "range": {"since": since, "until": until},
            "counts": {
                "memories": len(exported),
                "versions": sum(len(e.records) for e in exported),
                "embeddings": 0 if vectors is None else len(vectors),
                "activation": sum(m.startswith("activation/") for m, _ in tensor_files),
                "parametric": sum(m.startswith("parametric/") for m, _ in tensor_files),
            },
            "redaction": {"applied": redacted > 0, "policy": policy,
                          "redacted_memories": redacted},
            "live_ids": LIVE_IDS if since > 0 else None,
            "files": writer.files,
        }
        rules = extraction_rules(mos, found.id)
        if rules is not None:
            manifest["extraction"] = rules
        if signing_key is not None:
            manifest = sign_manifest(manifest, signing_key)
        out = writer.finish(manifest)
    except BaseException:
        writer.abort()
        raise
    mos.record_audit("export.archive", cube_id=found.id, detail={
        "memories": len(exported), "since": since, "until": until, "redacted": redacted,
        "signed_by": manifest.get("signature", {}).get("key_id")})
    return ExportReport(
        path=out, cube=found.name, memories=len(exported),
        versions=manifest["counts"]["versions"], embeddings=manifest["counts"]["embeddings"],
        since=since, until=until,
        signed_by=key_id(signing_key.public_key()) if signing_key else None,
        redacted=redacted, messages=messages,
    )


def _collect(
    mos: MemOS, guard: ExportGuard, since: int, until: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[_Exported], list[str]]:
    """The visible memories (others' private ones are filtered out) as of `until`."""
    vault = mos.vault
    flt = guard.filter(ItemFilter(cube_ids=(guard.cube.id,), states=()))
    current: list[MemoryItem] = []
    while batch := vault.list_items(flt, limit=_PAGE, offset=len(current)):
        current.extend(batch)
    current.sort(key=lambda i: (i.created_at, i.id))
    out: list[_Exported] = []
    live: list[str] = []
    seen: set[str] = set()
    for n, item in enumerate(current, start=1):
        if item.id in seen:  # a page boundary shifted by a concurrent insert
            continue
        seen.add(item.id)
        history = [r for r in vault.history(item.id) if r.clock <= until]
        if not history:
            continue  # created after `until`, or purged meanwhile
        live.append(item.id)
        records = [r for r in history if r.clock > since]
        if records:
            as_of = history[-1].item.model_copy(update={"stats": item.stats})
            out.append(_Exported(as_of, records))
        if progress:
            progress(n, len(current))
    return out, live


def redactor_for(mos: MemOS, guard: ExportGuard, redact: bool) -> Redactor:
    """`redact`: every memory labelled sensitive is redacted. Otherwise (needs the
    `sensitive` scope) the cube's policy decides (`ExportGuard.redact`)."""
    if redact:
        return redact_item
    if not mos.actor.allows("sensitive"):
        raise PermissionDeniedError(
            f"{mos.actor.user_id} may not export sensitive data unredacted "
            "(needs the 'sensitive' scope)")
    return guard.redact


def _redact(
    exported: list[_Exported], redactor: Redactor
) -> tuple[list[_Exported], int, set[str]]:
    """(items as they leave, how many were redacted, their ids)."""
    out, changed = [], set()
    for e in exported:
        item = redactor(e.item)
        if item.text != e.item.text:
            changed.add(item.id)
        records = [VersionRecord(redactor(r.item), r.clock, r.op, r.at) for r in e.records]
        out.append(_Exported(item, records))
    return out, len(changed), changed


def _withheld_sources(mos: MemOS, exported: list[_Exported], live: list[str]) -> set[str]:
    """Sources of exported derived memories that the export does not carry as stored:
    not visible to the exporter (not live here), or sensitive (redacted in some export)."""
    wanted = {s for e in exported if is_derived(e.item) for s in e.item.derived_from}
    if not wanted:
        return set()
    alive = set(live)
    found = mos.vault.get_many(sorted(wanted))
    return {s for s in wanted
            if s not in alive or s not in found or found[s].sensitivity}


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk


def _vectors(
    mos: MemOS, cube: MemCube, exported: list[_Exported], messages: list[str]
) -> np.ndarray | None:
    """Row i embeds memory i's exported text: the stored vector where that text is the
    stored one, else freshly embedded (only possible with the cube's embedder)."""
    if not exported:
        return np.zeros((0, cube.config.embedding_dim), dtype=np.float32)
    stored = mos.vault.vectors([e.item.id for e in exported])
    current = mos.vault.get_many([e.item.id for e in exported])
    rows: list[np.ndarray | None] = []
    missing: list[int] = []
    for i, e in enumerate(exported):
        now = current.get(e.item.id)
        if e.item.id in stored and now is not None and now.text == e.item.text:
            rows.append(stored[e.item.id])
        else:
            rows.append(None)
            missing.append(i)
    if missing:
        same = (mos.embedder.id == cube.config.embedder_id
                and mos.embedder.dim == cube.config.embedding_dim)
        if not same:
            messages.append(f"embeddings left out: {len(missing)} memories need embedding "
                            f"with {cube.config.embedder_id}, which this runtime does not "
                            "have; the importer will embed them")
            return None
        for start in range(0, len(missing), _EMBED_BATCH):
            idx = missing[start:start + _EMBED_BATCH]
            vecs = mos.embedder.embed([exported[i].item.text for i in idx])
            for i, vec in zip(idx, vecs, strict=True):
                rows[i] = vec
    return np.vstack([np.asarray(r, dtype="<f4").reshape(1, -1) for r in rows])


def _jsonl(rows: Any) -> Iterator[bytes]:
    buf: list[str] = []
    for row in rows:
        buf.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        if len(buf) >= 500:
            yield ("\n".join(buf) + "\n").encode()
            buf = []
    if buf:
        yield ("\n".join(buf) + "\n").encode()
