"""Change events: what every memory change looks like as an event, and how one is signed.

Every write path of the storage layer (`Vault.commit`, `purge`, `import_versions`) records
its events in an outbox table inside the same transaction as the change (see
`infra/vault/events_sql.py`), so no change exists without its event and no event exists
for a rolled-back transaction. Each event has a random id (receivers deduplicate on it)
and a sequence number that grows in commit order (readers resume after the last one
they saw). Webhook delivery (`infra/events_delivery.py`) and the SSE stream read the
outbox; neither ever runs on the write path. docs/events.md.

Payloads are small: a memory's type, state, tags, visibility and owner, and at most
`TEXT_PREVIEW` characters of its text (none at all when the text carries sensitivity
labels). Purging a memory scrubs its text from the payloads of its earlier events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from memosys.errors import ValidationError
from memosys.types import MemoryItem, MemoryState, new_id

STORAGE_KINDS = ("created", "updated", "deleted", "purged", "state_changed", "rolled_back")
"""Kinds only the storage layer writes (one per memory change)."""
PUBLISHED_KINDS = ("consolidated",)
"""Kinds known to be published through `EventsAPI.publish` (consolidation); others may be
published too, under a name that is not a storage kind."""
KNOWN_KINDS = STORAGE_KINDS + PUBLISHED_KINDS

TEXT_PREVIEW = 500
"""At most this many characters of a memory's text travel in its event."""
MAX_DATA_BYTES = 16 * 1024
"""A published event's `data`, as JSON, must fit in this."""
SCRUBBED = "[purged]"

_KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")

event_actor: ContextVar[str | None] = ContextVar("memosys_event_actor", default=None)
"""Who the current Memory API call acts as; set by the runtime on every call, read by the
storage layer when it records events (the vault itself knows no principals)."""

SYSTEM_ACTOR = "system"


@dataclass(frozen=True)
class NewEvent:
    """An event about to be stored; the store assigns its sequence number."""

    kind: str
    cube_id: str
    memory_id: str | None
    version: int | None
    op: str
    actor: str
    payload: dict[str, Any]
    id: str = field(default_factory=new_id)
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Event:
    seq: int
    id: str
    kind: str
    cube_id: str
    memory_id: str | None
    version: int | None
    op: str
    actor: str
    at: datetime
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The wire form (webhook body, SSE data, REST listing)."""
        return {"id": self.id, "seq": self.seq, "kind": self.kind, "cube_id": self.cube_id,
                "memory_id": self.memory_id, "version": self.version, "op": self.op,
                "actor": self.actor, "at": self.at.isoformat(), "data": self.payload}

    @property
    def private_owner(self) -> str | None:
        """The owner when the memory is private (only they and admins see its events)."""
        if self.payload.get("visibility") == "private":
            return str(self.payload.get("owner") or "")
        return None


def current_actor() -> str:
    return event_actor.get() or SYSTEM_ACTOR


def classify(op: str, item: MemoryItem, prev_state: str | None) -> str:
    """The event kind of one stored version (`prev_state` None: the memory is new)."""
    if prev_state is None:
        return "created"
    if op in ("rollback", "rollback_cube"):
        return "rolled_back"
    state = item.state.value
    if state == MemoryState.DELETED.value and prev_state != state:
        return "deleted"
    if state != prev_state:
        return "state_changed"
    return "updated"


def item_payload(item: MemoryItem, op: str, prev_state: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "op": op, "kind": item.kind.value, "memory_type": item.memory_type.value,
        "state": item.state.value, "tags": list(item.tags),
        "visibility": item.visibility.value, "owner": item.owner,
    }
    if prev_state is not None and prev_state != item.state.value:
        payload["prev_state"] = prev_state
    if item.sensitivity:
        # labelled text is masked for most readers: it never leaves through an event
        payload["text_withheld"] = True
    else:
        payload["text"] = item.text[:TEXT_PREVIEW]
        if len(item.text) > TEXT_PREVIEW:
            payload["text_truncated"] = True
    return payload


def commit_events(stored: Sequence[MemoryItem], ops: Sequence[str],
                  prev_states: dict[tuple[str, int], str]) -> list[NewEvent]:
    """The events of one `Vault.commit`: one per stored version. `prev_states` maps
    (memory id, version) to the state of that (previous) version."""
    actor = current_actor()
    now = time.time()
    out = []
    for item, op in zip(stored, ops, strict=True):
        prev = prev_states.get((item.id, item.version - 1)) if item.version > 1 else None
        out.append(NewEvent(classify(op, item, prev), item.cube_id, item.id, item.version, op,
                            actor, item_payload(item, op, prev), at=now))
    return out


def import_events(cube_id: str, items: Iterable[tuple[MemoryItem, bool]]) -> list[NewEvent]:
    """Events of an import into a cube: (latest imported version, whether the memory
    existed before)."""
    actor = current_actor()
    now = time.time()
    return [NewEvent("updated" if existed else "created", cube_id, item.id, item.version,
                     "import", actor, item_payload(item, "import", None), at=now)
            for item, existed in items]


def purge_event(memory_id: str, cube_id: str, version: int) -> NewEvent:
    """A purge's event: ids and counts only, never text."""
    return NewEvent("purged", cube_id, memory_id, version, "purge", current_actor(),
                    {"op": "purge"})


def published_event(kind: str, cube_id: str, memory_ids: Sequence[str],
                    data: dict[str, Any]) -> NewEvent:
    """An event a component publishes itself (e.g. `consolidated`)."""
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValidationError(f"invalid event kind {kind!r}: lowercase letters, digits, "
                              "'_', '.', '-' (at most 64)")
    if kind in STORAGE_KINDS:
        raise ValidationError(f"{kind!r} events come from the storage layer only")
    if not isinstance(data, dict):
        raise ValidationError("event data must be a JSON object")
    ids = [str(i) for i in memory_ids]
    payload = {**data, "memory_ids": ids}
    try:
        size = len(json.dumps(payload, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"event data must be JSON: {exc}") from None
    if size > MAX_DATA_BYTES:
        raise ValidationError(f"event data is {size} bytes; at most {MAX_DATA_BYTES}")
    return NewEvent(kind, cube_id, ids[0] if len(ids) == 1 else None, None, kind,
                    current_actor(), payload)


def scrubbed(payload: dict[str, Any], own: bool, texts: Sequence[str]) -> dict[str, Any]:
    """`payload` without a purged memory's content. An event of that memory (`own`) loses
    its text and tags; in any event, a string holding one of the memory's texts (any
    version; or its first `TEXT_PREVIEW` characters, e.g. quoted in a consolidation
    summary) becomes `SCRUBBED`."""
    needles = [n for n in {t.strip()[:TEXT_PREVIEW] for t in texts} if n]

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return SCRUBBED if any(n in value for n in needles) else value
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    out: dict[str, Any] = clean(payload)
    if own:
        for key in ("text", "text_truncated", "tags"):
            out.pop(key, None)
        out["text_purged"] = True
    return out


def event_from_row(row: Sequence[Any]) -> Event:
    seq, eid, kind, cube_id, memory_id, version, op, actor, at, payload = row
    return Event(int(seq), eid, kind, cube_id, memory_id,
                 None if version is None else int(version), op, actor,
                 datetime.fromtimestamp(float(at), UTC), json.loads(payload))


EVENT_COLS = "seq, id, kind, cube_id, memory_id, version, op, actor, at, payload"


# --- signatures ------------------------------------------------------------------------
SIGNATURE_HEADER = "X-Memosys-Signature"
TIMESTAMP_HEADER = "X-Memosys-Timestamp"
EVENT_ID_HEADER = "X-Memosys-Event-Id"
EVENT_KIND_HEADER = "X-Memosys-Event"
DELIVERY_HEADER = "X-Memosys-Delivery"
ATTEMPT_HEADER = "X-Memosys-Attempt"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 with the webhook's secret over `"<timestamp>." + body`
    (the raw body bytes). The timestamp is inside the MAC so a replayer cannot refresh
    it; receivers reject old timestamps and event ids they have seen."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: float = 300.0,
           now: float | None = None) -> bool:
    """A receiver's check (also what docs/events.md shows): the signature matches and the
    timestamp is within `tolerance` seconds. Header names are matched case-insensitively.
    Deduplicating on the event id is the receiver's part."""
    lower = {k.lower(): v for k, v in headers.items()}
    given = lower.get(SIGNATURE_HEADER.lower(), "")
    try:
        ts = int(lower.get(TIMESTAMP_HEADER.lower(), ""))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(given, sign(secret, ts, body))
