"""Memory lifecycle: states, TTL, decay by heat, the review queue and feedback kinds.

States: ``active`` → ``frozen`` (kept as is, not retrieved by default, never decays) →
``archived`` (cold: not retrieved by default, restorable) → ``deleted`` (tombstone,
restorable by rollback) → purged (erased; `MemOS.purge`). ``superseded``/``invalidated``
come from reconciliation (a newer fact replaced the memory).

* **TTL**: a memory expires at ``metadata["expires_at"]`` (ISO time; `set_ttl`), else
  ``created_at + ttl[memory_type]`` from the cube policy (`MemOS.set_cube_policy(cube,
  ttl={"episode": 86400})`). An expired memory becomes ``deleted``.
* **Decay**: heat = recency × frequency × feedback, with recency
  ``0.5 ** (days since last use / half_life_days)``, frequency
  ``1 + ln(1 + accesses + 2 × uses in answers)`` and feedback
  ``clamp(1 + 0.5 × feedback score, 0.1, 4)``. An active memory older than
  ``min_age_days`` whose heat falls below ``archive_below`` is archived; rules and
  personas are exempt by default. Settings per cube: ``set_cube_policy(cube, decay={...})``.
* `run` applies both and returns a report of every transition and its reason; the changes
  are ordinary versioned updates (checked, audited, reversible by rollback).
* **Review queue**: contradictions found by the MemReader (a new memory that superseded
  another), low-confidence extractions (``metadata["reader"]["confidence"]`` below 0.5)
  and memories reported ``wrong`` wait for a person or agent to approve or reject.
* **Feedback**: `feedback(id, "useful" | "wrong" | "outdated" | number, note,
  correction=...)` feeds the feedback score (and so heat); ``wrong``/``outdated`` with a
  correction write it as a new version, ``outdated`` alone invalidates the memory, and
  ``wrong`` alone queues it for review. Notes live in the memory's metadata (erased with
  it), never in the audit log.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from memosys.errors import ConflictError, NotFoundError, ValidationError
from memosys.infra.governance import ReviewEntry
from memosys.types import MemoryItem, MemoryState, MemoryType, new_id, utcnow

if TYPE_CHECKING:
    from memosys.system import MemOS

FEEDBACK_KINDS: dict[str, float] = {"useful": 1.0, "wrong": -2.0, "outdated": -1.0}
REVIEW_KINDS = ("contradiction", "low_confidence", "feedback")
LOW_CONFIDENCE = 0.5
_LIVE_STATES = (MemoryState.ACTIVE, MemoryState.FROZEN, MemoryState.ARCHIVED,
                MemoryState.INVALIDATED, MemoryState.SUPERSEDED)


@dataclass(frozen=True)
class DecayPolicy:
    enabled: bool = True
    half_life_days: float = 30.0
    archive_below: float = 0.05
    min_age_days: float = 7.0
    exempt_types: tuple[str, ...] = ("rule", "persona")

    @classmethod
    def from_dict(cls, raw: Any) -> DecayPolicy:
        if not isinstance(raw, dict):
            raise ValidationError("decay policy must be a dict")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValidationError(f"unknown decay setting(s) {sorted(unknown)}")
        values = dict(raw)
        try:
            for name in ("half_life_days", "archive_below", "min_age_days"):
                if name in values:
                    values[name] = float(values[name])
                    if values[name] < 0 or (name == "half_life_days" and values[name] == 0):
                        raise ValueError(name)
            if "exempt_types" in values:
                values["exempt_types"] = tuple(MemoryType(t).value for t in
                                               values["exempt_types"])
            if "enabled" in values and not isinstance(values["enabled"], bool):
                raise ValueError("enabled")
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"bad decay setting: {exc}") from None
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["exempt_types"] = list(self.exempt_types)
        return out


def check_ttl_policy(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ValidationError("ttl policy must map memory types to seconds")
    out: dict[str, float] = {}
    for key, value in raw.items():
        try:
            kind = MemoryType(key).value
        except ValueError:
            raise ValidationError(f"unknown memory type {key!r} in ttl policy") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValidationError(f"ttl for {kind} must be a positive number of seconds")
        out[kind] = float(value)
    return out


def heat(item: MemoryItem, now: datetime, policy: DecayPolicy) -> float:
    s = item.stats
    last = s.last_accessed or item.updated_at or item.created_at
    days = max(0.0, (now - last).total_seconds() / 86400)
    recency = 0.5 ** (days / policy.half_life_days)
    frequency = 1.0 + math.log1p(s.access_count + 2 * s.used_in_answer_count)
    feedback = min(4.0, max(0.1, 1.0 + 0.5 * s.feedback_score))
    return recency * frequency * feedback


@dataclass(frozen=True)
class Transition:
    item_id: str
    cube_id: str
    from_state: str
    to_state: str
    reason: str
    heat: float | None = None
    applied: bool = True


@dataclass
class LifecycleReport:
    transitions: list[Transition] = field(default_factory=list)
    reviews_added: list[ReviewEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Ids that changed meanwhile (left for the next run)."""

    def as_dict(self) -> dict[str, Any]:
        return {"transitions": [asdict(t) for t in self.transitions],
                "reviews_added": [r.id for r in self.reviews_added],
                "skipped": list(self.skipped)}


class Lifecycle:
    """Bound to a runtime (or an actor view); every change goes through its Memory API."""

    def __init__(self, mos: MemOS) -> None:
        self.mos = mos

    # --- states --------------------------------------------------------------------------
    def set_state(self, item_id: str, state: MemoryState | str) -> MemoryItem:
        target = _state(state)
        return self.mos.update(item_id, state=target)

    def freeze(self, item_id: str) -> MemoryItem:
        return self.set_state(item_id, MemoryState.FROZEN)

    def archive(self, item_id: str) -> MemoryItem:
        return self.set_state(item_id, MemoryState.ARCHIVED)

    def restore(self, item_id: str) -> MemoryItem:
        """Back to active (from frozen, archived or deleted)."""
        return self.set_state(item_id, MemoryState.ACTIVE)

    def set_ttl(self, item_id: str, seconds: float | None) -> MemoryItem:
        """Expire the memory `seconds` from now (None: no per-memory TTL)."""
        current = self.mos.get(item_id)
        meta = dict(current.metadata)
        if seconds is None:
            meta.pop("expires_at", None)
        else:
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise ValidationError("ttl must be a positive number of seconds")
            meta["expires_at"] = (utcnow() + timedelta(seconds=seconds)).isoformat()
        return self.mos.update(item_id, metadata=meta)

    # --- the periodic run ----------------------------------------------------------------
    def run(self, cube: str | None = None, *, now: datetime | None = None,
            dry_run: bool = False) -> LifecycleReport:
        """Apply TTL and decay to one cube (or every cube the actor may change) and queue
        reviews; returns what moved and why. `dry_run` reports without changing."""
        now = now or utcnow()
        report = LifecycleReport()
        cubes = [self.mos.get_cube(cube, need="write")] if cube else [
            c for c in self.mos.list_cubes()
            if self.mos._access.unrestricted or "write" in self.mos._access.permissions(c)]
        for c in cubes:
            policy = self.mos.cube_policy(c.id)
            decay = DecayPolicy.from_dict(policy.get("decay") or {})
            ttl = check_ttl_policy(policy.get("ttl") or {})
            for item in self._items(c.id, (MemoryState.ACTIVE, MemoryState.FROZEN,
                                           MemoryState.ARCHIVED)):
                move = _expiry(item, ttl, now)
                if move is None and item.state == MemoryState.ACTIVE:
                    move = _cold(item, decay, now)
                if move is None:
                    continue
                to_state, reason, h = move
                self._apply(report, item, to_state, reason, h, dry_run)
            if not dry_run:
                report.reviews_added += self.collect_reviews(c.id)
        self.mos._audit("lifecycle.run", detail={
            "cubes": len(cubes), "transitions": len(report.transitions), "dry_run": dry_run})
        return report

    def _items(self, cube_id: str, states: tuple[MemoryState, ...]) -> list[MemoryItem]:
        out: list[MemoryItem] = []
        flt = {"states": [s.value for s in states]}
        while batch := self.mos.vault.list_items(
                self.mos._access.restrict(self.mos._filter([cube_id], flt)), 1000, len(out)):
            out.extend(batch)
        return out

    def _apply(self, report: LifecycleReport, item: MemoryItem, to_state: MemoryState,
               reason: str, h: float | None, dry_run: bool) -> None:
        t = Transition(item.id, item.cube_id, item.state.value, to_state.value, reason, h,
                       applied=not dry_run)
        if not dry_run:
            try:
                self.mos.update(item.id, state=to_state, expected_version=item.version)
            except ConflictError:
                report.skipped.append(item.id)
                return
        report.transitions.append(t)

    # --- reviews -------------------------------------------------------------------------
    def collect_reviews(self, cube_id: str) -> list[ReviewEntry]:
        """Queue contradictions and low-confidence extractions not reviewed yet."""
        store = self.mos.vault.governance
        seen = {(r.item_id, r.kind) for r in store.list_reviews([cube_id], state=None,
                                                                limit=1_000_000)}
        added: list[ReviewEntry] = []
        for item in self._items(cube_id, (MemoryState.ACTIVE,)):
            reader = item.metadata.get("reader") or {}
            if item.supersedes and reader.get("op") == "delete" and \
                    (item.id, "contradiction") not in seen:
                added.append(self._queue(item, "contradiction",
                                         "replaced a contradicting memory",
                                         (item.supersedes,)))
            confidence = reader.get("confidence", item.metadata.get("confidence"))
            if isinstance(confidence, int | float) and confidence < LOW_CONFIDENCE and \
                    (item.id, "low_confidence") not in seen:
                added.append(self._queue(item, "low_confidence",
                                         f"extraction confidence {confidence:.2f}", ()))
        return added

    def _queue(self, item: MemoryItem, kind: str, reason: str,
               related: tuple[str, ...]) -> ReviewEntry:
        entry = self.mos.vault.governance.add_review(ReviewEntry(
            new_id(), item.cube_id, item.id, kind, reason, related, "open", utcnow()))
        self.mos._audit("review.queue", items=[item], detail={"kind": kind,
                                                              "review": entry.id})
        return entry

    def flag_for_review(self, item_id: str, kind: str = "feedback", reason: str = ""
                        ) -> ReviewEntry:
        """Queue a memory for a person or agent to look at."""
        if kind not in REVIEW_KINDS:
            raise ValidationError(f"review kind must be one of {list(REVIEW_KINDS)}")
        item = self.mos.get(item_id)
        return self._queue(item, kind, reason or kind, ())

    def review_queue(self, cube: str | None = None, *, state: str | None = "open",
                     limit: int = 100) -> list[ReviewEntry]:
        cubes = [self.mos.get_cube(cube)] if cube else self.mos.list_cubes()
        return self.mos.vault.governance.list_reviews([c.id for c in cubes], state, limit)

    def resolve(self, review_id: str, decision: str) -> ReviewEntry:
        """`approve` (the memory stands; for a `wrong` report: the report stands and the
        memory is deleted) or `reject` (a contradiction is undone: the new memory is
        deleted and the old one restored; a low-confidence memory is deleted)."""
        if decision not in ("approve", "reject"):
            raise ValidationError("decision must be 'approve' or 'reject'")
        store = self.mos.vault.governance
        entry = store.get_review(review_id)
        try:
            self.mos.get_cube(entry.cube_id, need="write")
        except NotFoundError:
            raise NotFoundError(f"no review entry {review_id!r}") from None
        if entry.state != "open":
            raise ConflictError(f"review entry {review_id} is already {entry.state}")
        if entry.kind == "contradiction" and decision == "reject":
            self.mos.delete(entry.item_id)
            for old_id in entry.related_ids:
                self._restore_previous(old_id)
        elif (entry.kind == "low_confidence" and decision == "reject") or \
                (entry.kind == "feedback" and decision == "approve"):
            self.mos.delete(entry.item_id)
        done = store.resolve_review(review_id, "approved" if decision == "approve"
                                    else "rejected", self.mos.actor.user_id)
        self.mos._audit("review.resolve", cube_id=entry.cube_id,
                        items=[(entry.item_id, 0)], detail={"kind": entry.kind,
                                                            "decision": decision})
        return done

    def _restore_previous(self, item_id: str) -> None:
        """Roll an invalidated memory back to its last active version."""
        try:
            history = self.mos.history(item_id)
        except NotFoundError:
            return
        for record in reversed(history):
            if record.item.state == MemoryState.ACTIVE:
                self.mos.rollback(item_id, record.item.version)
                return

    # --- feedback ------------------------------------------------------------------------
    def feedback(self, item_id: str, kind: float | str, note: str | None = None, *,
                 correction: str | None = None) -> MemoryItem | None:
        mos = self.mos
        access = mos._access
        if isinstance(kind, bool) or not isinstance(kind, int | float | str):
            raise ValidationError("feedback must be a number or one of "
                                  f"{sorted(FEEDBACK_KINDS)}")
        if isinstance(kind, str) and kind not in FEEDBACK_KINDS:
            raise ValidationError(f"feedback kind must be one of {sorted(FEEDBACK_KINDS)} "
                                  "or a number")
        if note is not None and not isinstance(note, str):
            raise ValidationError("note must be a string")
        if correction is not None:
            if kind not in ("wrong", "outdated"):
                raise ValidationError("a correction goes with 'wrong' or 'outdated' feedback")
            if not isinstance(correction, str) or not correction.strip():
                raise ValidationError("correction must be a non-empty text")
        current = access.visible_item(item_id, "feedback")
        delta = float(kind) if not isinstance(kind, str) else FEEDBACK_KINDS[kind]
        label = kind if isinstance(kind, str) else "score"
        if isinstance(kind, str) and (note or correction or kind == "outdated"):
            access.require_item(current, "write", "feedback")
        mos.vault.add_feedback(current.id, delta)
        mos._audit("feedback", items=[current], detail={
            "kind": label, "delta": delta, "note": bool(note), "corrected": bool(correction)})
        if not isinstance(kind, str):
            return None
        changes: dict[str, Any] = {}
        if note or correction:
            meta = dict(current.metadata)
            meta["feedback"] = [*meta.get("feedback", []), {
                "kind": kind, "note": note, "by": mos.actor.user_id,
                "at": utcnow().isoformat()}]
            changes["metadata"] = meta
        if correction is not None:
            changes["text"] = correction
        elif kind == "outdated":
            changes.update(state=MemoryState.INVALIDATED, valid_to=max(
                utcnow(), current.valid_from or current.created_at))
        if kind == "wrong" and correction is None:
            self._queue(current, "feedback", "reported wrong", ())
        if changes:
            return mos.update(current.id, **changes)
        return None


def _state(value: MemoryState | str) -> MemoryState:
    try:
        return MemoryState(value)
    except ValueError:
        raise ValidationError(
            f"unknown state {value!r}; states: {[s.value for s in MemoryState]}") from None


def _expiry(item: MemoryItem, ttl: dict[str, float], now: datetime
            ) -> tuple[MemoryState, str, float | None] | None:
    raw = item.metadata.get("expires_at")
    expires: datetime | None = None
    why = ""
    if isinstance(raw, str):
        try:
            expires = datetime.fromisoformat(raw)
            why = "its TTL"
        except ValueError:
            expires = None
    if expires is None and item.memory_type.value in ttl:
        expires = item.created_at + timedelta(seconds=ttl[item.memory_type.value])
        why = f"the cube's TTL for {item.memory_type.value} ({ttl[item.memory_type.value]:g} s)"
    if expires is None:
        return None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=now.tzinfo)
    if expires > now:
        return None
    return MemoryState.DELETED, f"expired at {expires.isoformat(timespec='seconds')} by {why}", \
        None


def _cold(item: MemoryItem, policy: DecayPolicy, now: datetime
          ) -> tuple[MemoryState, str, float | None] | None:
    if not policy.enabled or item.memory_type.value in policy.exempt_types:
        return None
    age_days = (now - item.created_at).total_seconds() / 86400
    if age_days < policy.min_age_days:
        return None
    h = heat(item, now, policy)
    if h >= policy.archive_below:
        return None
    s = item.stats
    last = s.last_accessed or item.updated_at or item.created_at
    idle = (now - last).total_seconds() / 86400
    reason = (f"heat {h:.3f} < {policy.archive_below:g}: idle {idle:.0f} days "
              f"(half-life {policy.half_life_days:g}), {s.access_count} accesses, "
              f"{s.used_in_answer_count} uses in answers, feedback {s.feedback_score:+g}")
    return MemoryState.ARCHIVED, reason, h
