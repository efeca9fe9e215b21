"""Interop: memories from mem0 exports and plain JSONL/CSV files; readable JSONL out.

Inputs become version-1 memories and go through the same atomic import as MIP archives
(`exchange_import.import_archive`): the same conflict modes, one transaction. Ids are
derived from the source (mem0's memory id, or a JSONL/CSV row's `id`, else its text), so
importing the same file into the same cube again adds nothing twice.

mem0 (the OSS `Memory.get_all()`/`search()` result and the platform's `get_all`): a JSON
list of memories, or an object holding it under "results" (or "memories"). Each memory:
`memory` (the text; also `data`/`text`), `id`, `hash`, `metadata`, `categories`,
`created_at`, `updated_at`, and the promoted keys `user_id`, `agent_id`, `run_id`,
`actor_id`, `role`, `expiration_date`. They map to: text; source.user/agent/session/role;
owner = user_id; tags = categories; valid_to = expiration_date; created_at/updated_at;
everything else (mem0 id, hash, actor, metadata) under `metadata`.

Plain JSONL: one memory per line, a JSON string or an object with `text` (also `memory`/
`content`) and optionally `id`, `type`/`memory_type`, `tags` (list or "a;b"), `user`,
`agent`, `session`, `created_at`, `valid_from`, `valid_to`, `metadata`, `state`; other keys
go into metadata. CSV: a header row with the same column names. `export_plain_jsonl`
writes this JSONL form, so it reads back in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticError

from memosys.errors import ValidationError
from memosys.infra.exchange_archive import FORMAT, FORMAT_VERSION
from memosys.infra.exchange_import import (
    ImportReport,
    OnConflict,
    ParsedArchive,
    import_archive,
)
from memosys.infra.vault.base import ItemFilter, VersionRecord
from memosys.types import CubeConfig, MemCube, MemoryItem, MemoryState, MemoryType, new_id

if TYPE_CHECKING:
    from memosys.system import MemOS

SOURCES = ("mip", "mem0", "jsonl", "csv")
MAX_INPUT_BYTES = 1 << 30
_TEXT_KEYS = ("text", "memory", "content", "data")
_TAG_SPLIT = re.compile(r"[;,|]")
_PLAIN_KEYS = {"id", "type", "memory_type", "tags", "user", "agent", "session", "role",
               "created_at", "updated_at", "valid_from", "valid_to", "metadata", "state",
               "owner", "version", *_TEXT_KEYS}


def import_file(
    mos: MemOS,
    path: str | Path,
    *,
    source: str,
    name: str,
    on_conflict: OnConflict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import a mem0 export or a plain JSONL/CSV file as cube `name`."""
    if source not in ("mem0", "jsonl", "csv"):
        raise ValidationError(f"unknown source format {source!r}; expected mem0, jsonl or csv")
    text = _read_text(path)
    rows = {"mem0": _mem0_rows, "jsonl": _jsonl_rows, "csv": _csv_rows}[source](text)
    drafts: dict[str, MemoryItem] = {}
    for where, key, fields in rows:
        item = _item(where, key, fields)
        drafts.setdefault(item.id, item)  # the same memory twice in one file: kept once
    parsed = _as_archive(mos, name, list(drafts.values()))
    report = import_archive(mos, parsed, name=name, on_conflict=on_conflict,
                            progress=progress)
    report.messages.append(f"read {len(drafts)} memories from {source} file {path}")
    return report


def _read_text(path: str | Path) -> str:
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise ValidationError(f"{file} is {size} bytes; the limit is {MAX_INPUT_BYTES}")
        return file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ValidationError(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{file} is not UTF-8 text: {exc}") from None


Row = tuple[str, str, dict[str, Any]]
"""(where, for messages; the source key the id derives from; MemoryItem fields)."""


def _mem0_rows(text: str) -> Iterator[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not a mem0 export (invalid JSON: {exc})") from None
    if isinstance(data, dict):
        data = data.get("results", data.get("memories"))
    if not isinstance(data, list):
        raise ValidationError("not a mem0 export: expected a list of memories, or an "
                              "object with a 'results' list")
    for n, raw in enumerate(data, start=1):
        where = f"memory {n}"
        if not isinstance(raw, dict):
            raise ValidationError(f"{where}: expected an object")
        text_value = _first(raw, ("memory", "data", "text"))
        metadata = dict(raw.get("metadata") or {})
        if not isinstance(metadata, dict):
            raise ValidationError(f"{where}: metadata must be an object")
        extra = {k: v for k, v in raw.items() if k not in {
            "id", "memory", "data", "text", "metadata", "categories", "created_at",
            "updated_at", "user_id", "agent_id", "run_id", "role", "expiration_date",
            "score"} and v is not None}
        mem0_id = raw.get("id")
        metadata.update({f"mem0_{k}": v for k, v in extra.items()})
        if mem0_id is not None:
            metadata["mem0_id"] = str(mem0_id)
        fields = {
            "text": text_value,
            "memory_type": MemoryType.FACT,
            "source": {"user": raw.get("user_id"), "agent": raw.get("agent_id"),
                       "session": raw.get("run_id"), "role": raw.get("role")},
            "owner": raw.get("user_id"),
            "tags": _tags(raw.get("categories"), where),
            "metadata": metadata,
            "valid_to": _time(raw.get("expiration_date"), where, "expiration_date"),
        }
        created = _time(raw.get("created_at"), where, "created_at")
        if created is not None:
            fields["created_at"] = created
        updated = _time(raw.get("updated_at"), where, "updated_at") or created
        if updated is not None:
            fields["updated_at"] = updated
        key = f"mem0:{mem0_id}" if mem0_id is not None else f"text:{_digest(text_value)}"
        yield where, key, fields


def _jsonl_rows(text: str) -> Iterator[Row]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"line {n}: not JSON ({exc})") from None
        yield _plain_row(f"line {n}", {"text": raw} if isinstance(raw, str) else raw)


def _csv_rows(text: str) -> Iterator[Row]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not set(reader.fieldnames) & set(_TEXT_KEYS):
        raise ValidationError("the CSV needs a header row with a 'text' column")
    for n, raw in enumerate(reader, start=2):
        if None in raw:
            raise ValidationError(f"row {n}: more cells than header columns")
        cleaned = {k: v for k, v in raw.items() if v not in (None, "")}
        if "metadata" in cleaned:
            try:
                cleaned["metadata"] = json.loads(cleaned["metadata"])
            except json.JSONDecodeError:
                raise ValidationError(f"row {n}: metadata must be a JSON object") from None
        yield _plain_row(f"row {n}", cleaned)


def _plain_row(where: str, raw: Any) -> Row:
    if not isinstance(raw, dict):
        raise ValidationError(f"{where}: expected a text or an object")
    text_value = _first(raw, _TEXT_KEYS)
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValidationError(f"{where}: metadata must be an object")
    metadata = {**metadata, **{k: v for k, v in raw.items() if k not in _PLAIN_KEYS}}
    fields: dict[str, Any] = {
        "text": text_value,
        "memory_type": raw.get("memory_type", raw.get("type", MemoryType.FACT)),
        "tags": _tags(raw.get("tags"), where),
        "source": {"user": raw.get("user"), "agent": raw.get("agent"),
                   "session": raw.get("session"), "role": raw.get("role")},
        "owner": raw.get("owner", raw.get("user")),
        "metadata": metadata,
    }
    for name in ("created_at", "updated_at", "valid_from", "valid_to"):
        value = _time(raw.get(name), where, name)
        if value is not None:
            fields[name] = value
    if "created_at" in fields and "updated_at" not in fields:
        fields["updated_at"] = fields["created_at"]
    if raw.get("state"):
        fields["state"] = raw["state"]
    key = f"id:{raw['id']}" if raw.get("id") else f"text:{_digest(text_value)}"
    return where, key, fields


def _first(raw: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        if isinstance(raw.get(key), str):
            return str(raw[key])
    raise ValidationError(f"no text: expected one of {list(keys)} as a string")


def _tags(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = _TAG_SPLIT.split(value)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValidationError(f"{where}: tags must be a list of strings or 'a;b;c'")
    return [t.strip().replace(",", " ")[:64] for t in value if t.strip()]


def _time(value: Any, where: str, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        try:
            parsed = datetime.combine(date.fromisoformat(str(value)), datetime.min.time())
        except ValueError:
            raise ValidationError(f"{where}: {name} is not an ISO date/time: {value!r}") \
                from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _item(where: str, key: str, fields: dict[str, Any]) -> MemoryItem:
    try:
        return MemoryItem(id=key, cube_id="-", **fields)
    except PydanticError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "value"
        raise ValidationError(f"{where}: {field}: {err['msg'].removeprefix('Value error, ')}") \
            from None


def _as_archive(mos: MemOS, name: str, drafts: list[MemoryItem]) -> ParsedArchive:
    """The drafts as a verified one-version archive, so the one import path applies."""
    header = MemCube(id=new_id(), name=name, clock=1 if drafts else 0, config=CubeConfig(
        embedder_id=mos.embedder.id, embedding_dim=mos.embedder.dim))
    now = datetime.now(UTC)
    memories = [d.model_copy(update={"cube_id": header.id}) for d in drafts]
    records = {m.id: [VersionRecord(m, 1, "import", now)] for m in memories}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "embedder": {"id": mos.embedder.id, "dim": mos.embedder.dim},
        "counts": {"memories": len(memories), "versions": len(memories), "embeddings": 0,
                   "activation": 0, "parametric": 0},
        "range": {"since": 0, "until": header.clock},
    }
    return ParsedArchive(manifest, header, memories, records, None, None, None)


def export_plain_jsonl(
    mos: MemOS,
    cube: str,
    path: str | Path,
    *,
    states: tuple[MemoryState, ...] = (MemoryState.ACTIVE,),
    redact: bool = True,
) -> int:
    """One readable JSON object per memory (oldest first), with the same access checks
    and redaction as `export_cube`; returns how many."""
    from memosys.infra.exchange_export import redactor_for

    guard = mos.export_guard(cube)
    found = guard.cube
    redactor = redactor_for(mos, guard, redact)
    flt = guard.filter(ItemFilter(cube_ids=(found.id,), states=states))
    items: list[MemoryItem] = []
    while batch := mos.vault.list_items(flt, limit=1000, offset=len(items)):
        items.extend(batch)
    items.sort(key=lambda i: (i.created_at, i.id))
    mos.record_audit("export.archive", cube_id=found.id, detail={"memories": len(items),
                                                         "format": "jsonl"})
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with tmp.open("w", encoding="utf-8") as fh:
        for item in items:
            item = redactor(item)
            fh.write(json.dumps(plain_row(item), ensure_ascii=False) + "\n")
    tmp.replace(target)
    return len(items)


def plain_row(item: MemoryItem) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": item.id, "text": item.text, "type": item.memory_type.value,
        "state": item.state.value, "version": item.version,
        "created_at": item.created_at.isoformat(), "updated_at": item.updated_at.isoformat(),
        "valid_from": item.valid_from.isoformat() if item.valid_from else None,
        "valid_to": item.valid_to.isoformat() if item.valid_to else None,
        "user": item.source.user, "agent": item.source.agent, "session": item.source.session,
        "role": item.source.role, "owner": item.owner, "tags": item.tags,
        "metadata": item.metadata,
    }
    return {k: v for k, v in row.items() if v not in (None, [], {})}
