"""Reconciliation: decide what a candidate memory does to what the cube already holds.

For each candidate the similar memories of the derived types are retrieved (MemOS.search,
all states) and one decision is taken:

* ``NOOP``   — already extracted from the same episode (idempotent re-runs), or a
  near-duplicate of an active memory about the same person: nothing is written.
* ``DELETE`` — it contradicts an active memory (same person, same attribute, new value; or
  the same statement negated): the old memory is *invalidated* (state ``invalidated``,
  ``valid_to`` = the new memory's ``valid_from``) and the new one added with
  ``supersedes`` = the old id, so "what was true in March" stays answerable (``valid_at``).
* ``UPDATE`` — it refines an active memory (says the same and more): a new version of it.
* ``ADD``    — anything else.

Decisions come from an LLM when a capable one is configured (never the 135M local model by
default), else from similarity thresholds plus a small contradiction heuristic. Every
decision is returned and recorded in the written memory's ``metadata["reader"]``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from memosys.errors import LLMError
from memosys.interface.extract import DERIVED_TYPES, Candidate, topic_tags
from memosys.interface.jsonrepair import StructuredOutputError, parse_json
from memosys.models.llm import LLM
from memosys.operation.context import content_words
from memosys.types import MemoryItem, MemoryState, Source, utcnow

if TYPE_CHECKING:
    from memosys.system import MemOS

OPS = ("ADD", "UPDATE", "DELETE", "NOOP")


@dataclass
class Decision:
    op: str
    reason: str
    text: str
    memory_type: str
    item_id: str | None = None
    """The memory written (ADD/DELETE: the new one; UPDATE: the updated one) or, for NOOP,
    the existing memory that made it unnecessary."""
    target_id: str | None = None
    """The existing memory it acted on (invalidated, updated, duplicated)."""
    decided_by: str = "rules"
    episode_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the heuristic --------------------------------------------------------------------------
_NEGATORS = {"not", "never", "no", "nor", "without"}
_NEG_PREDICATES = {"hate", "hates", "dislike", "dislikes", "detest", "detests", "loathe",
                   "loathes"}
_SENTIMENT = {"love", "loves", "like", "likes", "enjoy", "enjoys", "adore", "adores",
              "prefer", "prefers", "fan", "into", *_NEG_PREDICATES}
_CHANGE = re.compile(r"\b(?:now|no longer|anymore|any more|these days|switched|instead|"
                     r"changed|new|moved|quit|stopped|actually|nowadays)\b", re.IGNORECASE)
_ADDITIVE = re.compile(r"\b(?:also|too|as well|another|additionally)\b", re.IGNORECASE)
_FILLER = {"now", "anymore", "longer", "days", "actually", "nowadays", "instead", "really",
           "also", "still", "new", "old", "rule", "mentioned"}
_HARD_SLOTS = [
    ("name", r"\bname is\b"),
    ("address", r"\baddress is\b|\blives at\b"),
    ("phone", r"\bphone(?: number)? is\b"),
    ("email", r"\bemail(?: address)? is\b"),
    ("age", r"\bis \d+(?: years old)?\b|\bturned \d+\b"),
    ("residence", r"\b(?:lives|living|moved|relocated) (?:in|to)\b|\bis based in\b"),
    ("employer", r"\bworks (?:at|for)\b"),
    ("job", r"\bworks as\b"),
    ("diet", r"\bis (?:a |an )?(?:vegetarian|vegan|pescatarian)\b|\beats meat\b"),
    ("relationship", r"\bis (?:married|single|divorced|engaged|dating)\b"),
]
_FAVORITE = re.compile(r"\b(?:favou?rite|fave) ([a-z\-]+(?: [a-z\-]+)?) (?:is|are|was|these)\b")
_PREFER = re.compile(r"\b(?:prefers?|would rather)\b")


def _normalise(text: str, about: str | None) -> str:
    low = text.lower().replace("can't stand", "hates").replace("cannot stand", "hates")
    low = re.sub(r"n't\b", " not", low)
    if about:
        low = re.sub(rf"\b{re.escape(about.lower())}(?:'s)?\b", " <s> ", low)
    return re.sub(r"\s+", " ", low)


def _polarity(norm: str) -> int:
    words = re.findall(r"[a-z]+", norm)
    flips = sum(w in _NEGATORS for w in words) + sum(w in _NEG_PREDICATES for w in words)
    flips += norm.count("no longer")
    return -1 if flips % 2 else 1


def _core(norm: str) -> set[str]:
    return {w for w in content_words(norm)
            if w not in _NEGATORS and w not in _SENTIMENT and w not in _FILLER and w != "s"}


def _slot(norm: str) -> tuple[str, bool] | None:
    """(slot, hard) — hard slots hold one value at a time (a name, an address)."""
    m = _FAVORITE.search(norm)
    if m:
        return f"favorite {m.group(1).split(' these')[0]}", True
    for name, pattern in _HARD_SLOTS:
        if re.search(pattern, norm):
            return name, True
    if _PREFER.search(norm):
        return "prefer", False
    return None


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def contradiction(new: Candidate, old: MemoryItem, sim: float) -> str | None:
    """Why `new` replaces `old` (same person and attribute, different value), or None."""
    about = new.about
    if (old.metadata.get("about") or None) != about:
        return None
    n_norm, o_norm = _normalise(new.text, about), _normalise(old.text, about)
    n_core, o_core = _core(n_norm), _core(o_norm)
    same_topic = bool(set(topic_tags(new.text)) & set(topic_tags(old.text)))
    if _polarity(n_norm) != _polarity(o_norm) and _jaccard(n_core, o_core) >= 0.6:
        return "the same statement with the opposite polarity"
    n_slot, o_slot = _slot(n_norm), _slot(o_norm)
    if (n_slot and o_slot and n_slot[0] == o_slot[0] and _jaccard(n_core, o_core) < 0.8
            and (n_slot[1] or same_topic or sim >= 0.7)):
        return f"same attribute ({n_slot[0]}) with a new value"
    if (new.memory_type == old.memory_type and _CHANGE.search(new.text)
            and not _ADDITIVE.search(new.text) and (same_topic or sim >= 0.7)
            and _jaccard(n_core, o_core) < 0.8 and sim >= 0.5):
        return "a change of the same kind of statement"
    return None


def _same_day(a: datetime | None, b: datetime | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.date() == b.date())


class Reconciler:
    """Applies candidates to a cube through the MemOS API (so every write is versioned)."""

    def __init__(
        self,
        mos: MemOS,
        *,
        llm: LLM | None = None,
        top_k: int = 10,
        duplicate_threshold: float = 0.9,
        refine_threshold: float = 0.75,
    ) -> None:
        self.mos = mos
        self.llm = llm
        self.top_k = top_k
        self.duplicate_threshold = duplicate_threshold
        self.refine_threshold = refine_threshold

    # --- deciding ------------------------------------------------------------------------
    def similar(self, cube_id: str, cand: Candidate) -> list[tuple[MemoryItem, float]]:
        hits = self.mos.search(
            cand.text, [cube_id], self.top_k,
            {"memory_types": [t.value for t in DERIVED_TYPES], "states": []},
            record_access=False,
        )
        if not hits:
            return []
        vecs = self.mos.embedder.embed([cand.text] + [h.item.text for h in hits])
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sims = vecs[1:] @ vecs[0]
        found = [(h.item, float(s)) for h, s in zip(hits, sims, strict=True)]
        return sorted(found, key=lambda pair: -pair[1])

    def decide(
        self, cand: Candidate, similar: list[tuple[MemoryItem, float]]
    ) -> tuple[str, str, MemoryItem | None, str]:
        """(op, reason, target, decided_by) — before anything is written."""
        episodes = set(cand.derived_from)
        for item, sim in similar:
            if episodes & set(item.derived_from) and (
                _core(item.text.lower()) == _core(cand.text.lower()) or sim >= 0.95
            ):
                return "NOOP", "already extracted from this episode", item, "rules"
        active = [(i, s) for i, s in similar if i.state == MemoryState.ACTIVE]
        if self.llm is not None and active:
            verdict = self._ask_llm(cand, active)
            if verdict is not None:
                return verdict
        for item, sim in active:
            same_about = (item.metadata.get("about") or None) == cand.about
            if not same_about:
                continue
            dup = sim >= self.duplicate_threshold or (
                _core(_normalise(item.text, cand.about)) == _core(_normalise(cand.text,
                                                                           cand.about))
                and _polarity(_normalise(item.text, cand.about))
                == _polarity(_normalise(cand.text, cand.about)))
            if dup and (cand.memory_type.value != "event" or item.memory_type.value != "event"
                        or _same_day(item.valid_from, cand.valid_from)):
                return "NOOP", f"near-duplicate of an active memory (similarity {sim:.2f})", \
                    item, "rules"
            old_norm = _normalise(item.text, cand.about)
            new_norm = _normalise(cand.text, cand.about)
            old_words, new_words = _core(old_norm), _core(new_norm)
            if (item.memory_type == cand.memory_type and sim >= self.refine_threshold
                    and old_words and len(old_words & new_words) >= 0.8 * len(old_words)
                    and len(new_words) > len(old_words)
                    and _polarity(old_norm) == _polarity(new_norm)
                    and not _CHANGE.search(cand.text)
                    and cand.memory_type.value != "event"):
                return "UPDATE", "refines an active memory (says the same and more)", item, \
                    "rules"
            why = contradiction(cand, item, sim)
            if why:
                return "DELETE", why, item, "rules"
        return "ADD", "new information", None, "rules"

    def _ask_llm(
        self, cand: Candidate, active: list[tuple[MemoryItem, float]]
    ) -> tuple[str, str, MemoryItem | None, str] | None:
        assert self.llm is not None
        shown = active[:5]
        listing = "\n".join(f"{n}. [{i.memory_type.value}] {i.text}"
                            for n, (i, _) in enumerate(shown, 1))
        prompt = (
            "Existing memories:\n" + listing + f"\n\nNew memory: [{cand.memory_type.value}] "
            f"{cand.text}\n\nDecide what to do. Reply with JSON only: "
            '{"op": "ADD|UPDATE|DELETE|NOOP", "id": <number or null>, "reason": "..."}\n'
            "NOOP: an existing memory already says this. UPDATE: the new memory refines "
            "existing memory <id> (same fact, more detail). DELETE: the new memory "
            "contradicts existing memory <id>, which is no longer true. ADD: otherwise."
        )
        try:
            result = self.llm.chat([{"role": "user", "content": prompt}], max_new_tokens=120)
            value = parse_json(result.text)
        except (LLMError, StructuredOutputError):
            return None
        if not isinstance(value, dict):
            return None
        op = str(value.get("op", "")).upper().strip()
        ref = value.get("id")
        target = None
        if isinstance(ref, int | str) and str(ref).strip().isdigit():
            k = int(str(ref).strip())
            target = shown[k - 1][0] if 1 <= k <= len(shown) else None
        if op not in OPS or (op != "ADD" and target is None):
            return None
        if op == "ADD":
            target = None
        reason = str(value.get("reason") or "decided by the model")[:300]
        return op, reason, target, f"llm:{getattr(self.llm, 'id', 'llm')}"

    # --- applying ------------------------------------------------------------------------
    def apply(
        self,
        cube_id: str,
        cand: Candidate,
        origin: dict[str, MemoryItem],
        *,
        job_id: str | None = None,
    ) -> Decision:
        similar = self.similar(cube_id, cand)
        op, reason, target, by = self.decide(cand, similar)
        decision = Decision(op, reason, cand.text, cand.memory_type.value,
                            target_id=target.id if target else None, decided_by=by,
                            episode_ids=list(cand.derived_from))
        note = {"op": op.lower(), "reason": reason, "extractor": cand.extractor,
                "decided_by": by, "at": utcnow().isoformat()}
        if job_id:
            note["job"] = job_id
        if cand.time_text:
            note["time_text"] = cand.time_text
        if op == "NOOP":
            decision.item_id = target.id if target else None
            if target is not None and target.supersedes:
                self._finish_supersede(target, note)  # a crash may have stopped half-way
            return decision
        if op == "UPDATE" and target is not None:
            meta = dict(target.metadata)
            meta["reader"] = {**note, "previous_text": target.text,
                              "episodes": sorted(set(meta.get("reader", {}).get("episodes", [])
                                                     + cand.derived_from))}
            updated = self.mos.update(target.id, text=cand.text, metadata=meta,
                                      tags=sorted(set(target.tags) | set(cand.tags)))
            decision.item_id = updated.id
            return decision
        item = self._new_item(cube_id, cand, origin, note)
        if op == "DELETE" and target is not None:
            start = cand.valid_from
            old_start = target.valid_from
            if start is not None and old_start is not None and start < old_start:
                # the candidate is older news than what the cube holds: keep it as history
                item = item.model_copy(update={"state": MemoryState.INVALIDATED,
                                               "valid_to": old_start})
                item.metadata["reader"] = {**note, "op": "add",
                                           "reason": f"{reason}; older than {target.id}, "
                                                     "stored as history"}
                decision.op, decision.reason = "ADD", item.metadata["reader"]["reason"]
                decision.item_id = self.mos.add_items(cube_id, [item])[0].id
                return decision
            item = item.model_copy(update={"supersedes": target.id})
            stored = self.mos.add_items(cube_id, [item])[0]
            decision.item_id = stored.id
            self._invalidate(target, stored, reason)
            return decision
        decision.item_id = self.mos.add_items(cube_id, [item])[0].id
        return decision

    def _new_item(
        self, cube_id: str, cand: Candidate, origin: dict[str, MemoryItem], note: dict[str, Any]
    ) -> MemoryItem:
        sources = [origin[e] for e in cand.derived_from if e in origin]
        first = sources[0] if sources else None
        src = first.source if first else Source()
        message_ids = sorted({m for s in sources for m in s.source.message_ids})
        tags = list(dict.fromkeys([*(first.tags if first else []), *cand.tags]))
        meta: dict[str, Any] = {"reader": note}
        if cand.about:
            meta["about"] = cand.about
            meta["speaker"] = cand.about
        return MemoryItem(
            cube_id=cube_id, memory_type=cand.memory_type, text=cand.text,
            valid_from=cand.valid_from,
            source=Source(user=src.user, agent=src.agent, session=src.session, role=src.role,
                          message_ids=message_ids, document_uri=src.document_uri),
            tags=tags, owner=first.owner if first else None,
            visibility=first.visibility if first else "cube",
            derived_from=list(cand.derived_from), metadata=meta,
        )

    def _invalidate(self, old: MemoryItem, new: MemoryItem, reason: str) -> None:
        end = new.valid_from or utcnow()
        if old.valid_from is not None and end < old.valid_from:
            end = old.valid_from
        meta = dict(old.metadata)
        meta["reader"] = {**meta.get("reader", {}), "invalidated_by": new.id,
                          "invalidated_reason": reason, "invalidated_at": utcnow().isoformat()}
        self.mos.update(old.id, state=MemoryState.INVALIDATED, valid_to=end, metadata=meta)

    def _finish_supersede(self, item: MemoryItem, note: dict[str, Any]) -> None:
        try:
            old = self.mos.get(item.supersedes or "")
        except KeyError:
            return
        if old.state == MemoryState.ACTIVE:
            self._invalidate(old, item, item.metadata.get("reader", {}).get("reason", "")
                             or note["reason"])
