"""Carrying out parsed memory commands (see :mod:`memosys.interface.intents`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from memosys.interface.extract import DERIVED_TYPES, Turn, classify, make_candidate
from memosys.interface.intents import (
    Intent,
    IntentResult,
    contains_words,
    query_words,
)
from memosys.interface.rewrite import to_third_person
from memosys.types import MemoryItem, MemoryState, MemoryType, utcnow

if TYPE_CHECKING:
    from memosys.interface.reader import MemReader

FORGET_SIMILARITY = 0.8
"""A memory this similar to the forget request matches even without every keyword."""
RECALL_LIMIT = 200


def run_intent(
    reader: MemReader,
    cube_id: str,
    intent: Intent,
    turn: Turn,
    *,
    user: str | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    origin: dict[str, MemoryItem] | None = None,
    job_id: str | None = None,
) -> IntentResult:
    if intent.kind == "remember":
        return _remember(reader, cube_id, intent, turn, origin or {}, job_id)
    if intent.kind == "forget":
        return _forget(reader, cube_id, intent, turn, user, exclude)
    if intent.kind == "recall":
        return _recall(reader, cube_id, intent, turn, user)
    return IntentResult("none", turn.text, message="not a memory command")


def _remember(reader: MemReader, cube_id: str, intent: Intent, turn: Turn,
              origin: dict[str, MemoryItem], job_id: str | None) -> IntentResult:
    body = intent.body
    kind = classify(body, "user") or MemoryType.FACT
    if body.lower().startswith("to "):
        kind, body = MemoryType.RULE, f"always remember {body}"
    cand = make_candidate(turn, body, kind, "intent")
    if cand is None:
        return IntentResult("remember", turn.text, message="nothing to remember")
    decision = reader.reconciler().apply(cube_id, cand, origin, job_id=job_id)
    items = [reader.mos.get(decision.item_id)] if decision.item_id else []
    verb = {"ADD": "remembered", "UPDATE": "updated", "DELETE": "remembered (replacing an "
            "older memory)", "NOOP": "already knew"}[decision.op]
    return IntentResult("remember", turn.text, items, [decision], f"{verb}: {cand.text}")


def _forget(reader: MemReader, cube_id: str, intent: Intent, turn: Turn, user: str | None,
            exclude: set[str] | frozenset[str]) -> IntentResult:
    mos = reader.mos
    speaker = turn.speaker or user
    query = to_third_person(intent.body, speaker)
    words = query_words(intent.body, speaker)
    states = [MemoryState.ACTIVE.value, MemoryState.INVALIDATED.value,
              MemoryState.SUPERSEDED.value]
    hits = mos.search(query, [cube_id], 50, {"states": states}, record_access=False)
    hits = [h for h in hits if h.item.id not in exclude and _belongs(h.item, speaker, user)]
    if hits:
        vecs = mos.embedder.embed([query] + [h.item.text for h in hits])
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sims = vecs[1:] @ vecs[0]
    else:
        sims = np.zeros(0)
    matched = [h.item for h, s in zip(hits, sims, strict=True)
               if contains_words(h.item.text, words) or s >= FORGET_SIMILARITY]
    derived = [i for i in matched if i.memory_type in DERIVED_TYPES]
    raw = [i for i in matched if i.memory_type not in DERIVED_TYPES]
    if intent.historical:
        old = [i for i in derived if i.state != MemoryState.ACTIVE]
        derived = old or derived  # "my old address": the replaced one, if there is one
        raw = []  # only the episodes the old memory came from (below)
    targets = {i.id: i for i in derived}
    for item in derived:
        for source_id in item.derived_from:
            if source_id not in exclude:
                targets.setdefault(source_id, None)  # type: ignore[arg-type]
    for item in raw:
        targets.setdefault(item.id, item)
    note: dict[str, Any] = {"by": user or speaker, "speaker": speaker,
                            "at": utcnow().isoformat(), "request": turn.text}
    deleted: list[MemoryItem] = []
    for item_id in targets:
        current = mos.get(item_id)
        if current.state == MemoryState.DELETED:
            continue
        mos.update(item_id, metadata={**current.metadata, "forgotten": note})
        deleted.append(mos.delete(item_id))
    what = ", ".join(i.text for i in deleted if i.memory_type in DERIVED_TYPES)[:300]
    message = f"forgot {len(deleted)} memories" + (f": {what}" if what else "")
    if not deleted:
        message = f"found nothing matching {intent.body!r}"
    return IntentResult("forget", turn.text, deleted, message=message)


def _recall(reader: MemReader, cube_id: str, intent: Intent, turn: Turn,
            user: str | None) -> IntentResult:
    mos = reader.mos
    speaker = turn.speaker or user
    types = [t.value for t in DERIVED_TYPES]
    if intent.body:
        query = to_third_person(intent.body, speaker)
        hits = mos.search(query, [cube_id], 20, {"memory_types": types})
        items = [h.item for h in hits if _belongs(h.item, speaker, user)]
    else:
        items = [i for i in mos.list(cube_id, {"memory_types": types}, limit=RECALL_LIMIT)
                 if _belongs(i, speaker, user)]
    lines = "; ".join(i.text for i in items[:20])
    return IntentResult("recall", turn.text, items,
                        message=f"{len(items)} memories" + (f": {lines}" if lines else ""))


def _belongs(item: MemoryItem, speaker: str | None, user: str | None) -> bool:
    """A memory about this person (or theirs): by `about`, speaker or source user."""
    if not speaker and not user:
        return True
    names = {n.lower() for n in (speaker, user) if n}
    about = item.metadata.get("about") or item.metadata.get("speaker")
    if about and str(about).lower() in names:
        return True
    return bool(item.source.user and item.source.user.lower() in names)
