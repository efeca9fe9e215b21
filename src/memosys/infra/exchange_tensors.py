"""Activation KV caches and LoRA adapters inside cube archives.

Both are derived memories: a record (a MemoryItem of kind `activation` / `parametric`, with
`derived_from` = its sources and the header in `metadata`) that travels in memories.jsonl
like any memory, plus a safetensors file under the installation's home that holds the
tensors and, in its own metadata, the same header. The archive carries that file verbatim as
`activation/<record id>.safetensors` or `parametric/<record id>.safetensors`.

Export leaves a derived memory out (record and file) when one of its sources is not exported
as it is stored (invisible to the exporter, or redacted): the tensors encode the source
text, so they would leak what the export withholds.

Import keeps a derived memory only when the target's bound model has the fingerprint the
header names, and ids are kept (`--keep-ids`: headers and cache keys name source ids).
Otherwise it is dropped with a message, and its sources are imported as usual.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memosys.errors import ArchiveError
from memosys.types import MemoryItem, MemoryKind

if TYPE_CHECKING:
    from memosys.system import MemOS


@dataclass(frozen=True)
class TensorKind:
    kind: MemoryKind
    member_dir: str
    """Folder in the archive."""
    home_dir: str
    """Folder under the installation home (see memories/activation.py, parametric.py)."""
    record_key: str
    """The record's metadata key holding the header."""
    file_key: str
    """The safetensors metadata key holding the header."""
    label: str

    def header(self, record: MemoryItem) -> dict[str, Any]:
        """The header the tensor file carries too (an adapter's record nests it under
        `header`, next to its serving status)."""
        meta = record.metadata.get(self.record_key)
        if not isinstance(meta, dict):
            return {}
        if self.kind == MemoryKind.PARAMETRIC:
            meta = meta.get("header")
        return meta if isinstance(meta, dict) else {}

    def fingerprint(self, record: MemoryItem) -> str | None:
        header = self.header(record)
        if self.kind == MemoryKind.ACTIVATION:
            value = header.get("model_fingerprint")
        else:
            value = (header.get("base_model") or {}).get("fingerprint")
        return value if isinstance(value, str) else None

    def member(self, record_id: str) -> str:
        return f"{self.member_dir}/{record_id}.safetensors"

    def local_path(self, mos: MemOS, record: MemoryItem) -> Path:
        header = record.metadata.get(self.record_key)
        name = header.get("file") if isinstance(header, dict) else None
        if not isinstance(name, str) or not _SAFE_FILE.match(name):
            name = f"{record.id}.safetensors"
        return Path(mos.settings.home) / self.home_dir / record.cube_id / name


KINDS: dict[MemoryKind, TensorKind] = {
    MemoryKind.ACTIVATION: TensorKind(MemoryKind.ACTIVATION, "activation", "activation",
                                      "activation", "memosys", "activation cache"),
    MemoryKind.PARAMETRIC: TensorKind(MemoryKind.PARAMETRIC, "parametric", "adapters",
                                      "adapter", "memosys_adapter", "LoRA adapter"),
}
_SAFE_FILE = re.compile(r"^[A-Za-z0-9_\-]+\.safetensors$")
_MEMBER = re.compile(r"^(activation|parametric)/([A-Za-z0-9_\-]+)\.safetensors$")
_MAX_HEADER = 100 << 20


def is_derived(item: MemoryItem) -> bool:
    return item.kind in KINDS


def export_files(
    mos: MemOS, items: Sequence[MemoryItem], withheld: set[str], messages: list[str]
) -> tuple[set[str], list[tuple[str, Path]], set[str]]:
    """(derived record ids to leave out, (member, file) pairs to add, fingerprints)."""
    leave_out: set[str] = set()
    files: list[tuple[str, Path]] = []
    fingerprints: set[str] = set()
    current = mos.vault.get_many([i.id for i in items if is_derived(i)])
    for item in items:
        spec = KINDS.get(item.kind)
        if spec is None:
            continue
        if any(s in withheld for s in item.derived_from):
            leave_out.add(item.id)
            messages.append(f"left out {spec.label} {item.id}: a source memory is withheld "
                            "or redacted in this export")
            continue
        path = spec.local_path(mos, item)
        now = current.get(item.id)
        if path.is_file() and now is not None and now.version == item.version:
            files.append((spec.member(item.id), path))
            if fp := spec.fingerprint(item):
                fingerprints.add(fp)
    return leave_out, files, fingerprints


def check_member(name: str, data: bytes, memories: dict[str, MemoryItem]) -> str:
    """The record id a tensor member belongs to, after checking its name, its record and
    its safetensors header (parsed as JSON only: no tensor is loaded)."""
    match = _MEMBER.match(name)
    if match is None:
        raise ArchiveError(f"unexpected tensor file {name!r}")
    folder, record_id = match.groups()
    record = memories.get(record_id)
    spec = next(s for s in KINDS.values() if s.member_dir == folder)
    if record is None or record.kind != spec.kind:
        raise ArchiveError(f"{name!r} has no {spec.kind.value} record in memories.jsonl")
    if len(data) < 8:
        raise ArchiveError(f"{name!r} is not a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        raise ArchiveError(f"{name!r}: bad safetensors header length")
    try:
        header = json.loads(data[8:8 + size])
        meta = header.get("__metadata__", {})
        embedded = json.loads(meta[spec.file_key])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ArchiveError(f"{name!r} has no readable memosys header") from None
    expected = spec.header(record)
    ident = "key" if spec.kind == MemoryKind.ACTIVATION else "id"
    if not isinstance(embedded, dict) or embedded.get(ident) != expected.get(ident):
        raise ArchiveError(f"{name!r}: its header does not match its record's")
    return record_id


def target_fingerprint(mos: MemOS) -> str | None:
    """The fingerprint of the model this installation binds caches/adapters to (loads the
    local model); None when it binds none (a remote chat model)."""
    from memosys.errors import LLMError
    from memosys.models.local_llm import LocalLLM

    try:
        llm = mos.llm
        return llm.model_fingerprint if isinstance(llm, LocalLLM) else None
    except LLMError:  # no local weights installed: nothing to bind caches to
        return None


def install(mos: MemOS, record: MemoryItem, data: bytes) -> Path:
    """Write a tensor file where the target's stores look for it (atomically)."""
    path = KINDS[record.kind].local_path(mos, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def plan_derived(
    records: Sequence[MemoryItem], files: dict[str, bytes], *, keep_ids: bool,
    same_cube: bool, fingerprint: str | None,
) -> tuple[set[str], list[str]]:
    """(derived record ids to drop, why, per kind and reason) for an import."""
    drop: set[str] = set()
    counts: dict[tuple[str, str], int] = {}
    for record in records:
        spec = KINDS[record.kind]
        fp = spec.fingerprint(record)
        if not keep_ids:
            why = "ids were remapped (import with --keep-ids to keep them)"
        elif spec.kind == MemoryKind.ACTIVATION and not same_cube:
            why = "cache keys name the source cube's id, and this is another cube"
        elif fingerprint is None:
            why = "this installation binds no local model"
        elif fp != fingerprint:
            why = (f"built for model {str(fp)[:12]}…, this installation's model is "
                   f"{fingerprint[:12]}…")
        elif spec.kind == MemoryKind.PARAMETRIC and record.id not in files:
            why = "the archive holds no weights for it"
        else:
            continue
        drop.add(record.id)
        counts[spec.label, why] = counts.get((spec.label, why), 0) + 1
    return drop, [f"{n} {label}(s) dropped: {why}; their source memories are imported"
                  for (label, why), n in counts.items()]
