"""Synthesised memories of a consolidation run: a **profile** per user and a **summary** per
topic, each `derived_from` its sources, with the source versions it was built from in
``metadata["consolidation"]["sources"]`` so a later run sees when a source changed (edited,
deleted, superseded) or new sources arrived, and regenerates it (a new version of the same
memory; the old text stays in its history).

Without a model the text is extractive: the group's most central statements (those whose
words recur most across the group), typed sections, duplicates left out. With
``synthesis="llm"`` the bound model writes it from those statements; an empty answer falls
back to the extractive text.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memosys.errors import MemosysError
from memosys.operation.consolidate_plan import (
    SYNTH_KEY,
    Action,
    ConsolidationConfig,
    content_words,
    is_synthesised,
)
from memosys.types import MemoryItem, MemoryType

if TYPE_CHECKING:
    from memosys.models.llm import LLM
    from memosys.system import MemOS

PROFILE_TYPES = (MemoryType.PERSONA, MemoryType.PREFERENCE, MemoryType.FACT)
TOPIC_TYPES = (MemoryType.FACT, MemoryType.PREFERENCE, MemoryType.EVENT, MemoryType.PERSONA,
               MemoryType.RULE)
SYNTH_TAGS = {"profile": "profile", "topic": "summary"}
_SECTION = {MemoryType.PERSONA: "Persona", MemoryType.PREFERENCE: "Preferences",
            MemoryType.FACT: "Facts", MemoryType.EVENT: "Events", MemoryType.RULE: "Rules"}
_MAX_CHARS = 4000


@dataclass(frozen=True)
class Group:
    """Memories a synthesised memory is made from: `key` identifies it across runs."""

    kind: str
    """profile | topic"""
    key: str
    label: str
    member_ids: tuple[str, ...]


# --- who a memory is about, and which topic it belongs to -----------------------------------
def subject_of(item: MemoryItem, by_id: dict[str, MemoryItem]) -> str | None:
    """The user a memory is about: its source user, else the speaker of the message it
    came from (LoCoMo, chat: episodes carry ``metadata["speaker"]``)."""
    if item.source.user:
        return item.source.user
    speaker = item.metadata.get("speaker")
    if isinstance(speaker, str) and speaker:
        return speaker
    for parent_id in item.derived_from:
        parent = by_id.get(parent_id)
        if parent is not None:
            if parent.source.user:
                return parent.source.user
            speaker = parent.metadata.get("speaker")
            if isinstance(speaker, str) and speaker:
                return speaker
    return None


def profile_groups(items: Sequence[MemoryItem], by_id: dict[str, MemoryItem],
                   cfg: ConsolidationConfig) -> list[Group]:
    members: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    for item in items:
        if item.memory_type not in PROFILE_TYPES or is_synthesised(item):
            continue
        who = subject_of(item, by_id)
        if who:
            members.setdefault(who.lower(), []).append(item.id)
            labels.setdefault(who.lower(), who)
    return [Group("profile", f"profile:{k}", labels[k], tuple(v))
            for k, v in sorted(members.items()) if len(v) >= cfg.profile_min_sources]


def topic_groups(mos: MemOS, cube_id: str, items: Sequence[MemoryItem],
                 cfg: ConsolidationConfig) -> list[Group]:
    """Topics of the cube: the runtime's topic index (`MemOS.topics`, docs/graph.md) when
    it is on and has topics for the cube, else memories grouped by shared tag. The one
    place that decides what a topic is for consolidation."""
    live = {i.id for i in items if i.memory_type in TOPIC_TYPES and not is_synthesised(i)}
    topics: list[Any] = []
    if getattr(mos.settings, "topics", False) and callable(getattr(mos, "topics", None)):
        try:
            topics = list(mos.topics(cube_id, limit=1000))
        except MemosysError:  # a vault without a topic index
            topics = []
    if topics:
        groups = []
        for topic in topics:
            ids = tuple(i for i in topic.memory_ids if i in live)
            if len(ids) >= cfg.topic_min_sources:
                groups.append(Group("topic", f"topic:{topic.id}", str(topic.label), ids))
        return groups
    by_tag: dict[str, list[str]] = {}
    for item in items:
        if item.id in live:
            for tag in item.tags:
                by_tag.setdefault(tag, []).append(item.id)
    return [Group("topic", f"topic:{tag}", tag, tuple(ids))
            for tag, ids in sorted(by_tag.items()) if len(ids) >= cfg.topic_min_sources]


# --- text -----------------------------------------------------------------------------------
def central(members: Sequence[MemoryItem], limit: int,
            ignore: frozenset[str] = frozenset()) -> list[MemoryItem]:
    """The `limit` most central statements, near-repeats left out: a statement scores the
    sum of log group frequencies of its content words (what the group keeps talking
    about), the group's own name (`ignore`) not counted; one- or two-word remarks are
    left out when there is more to say."""
    words = {m.id: content_words(m.text) - ignore for m in members}
    df: Counter[str] = Counter(w for ws in words.values() for w in ws)

    def score(m: MemoryItem) -> tuple[float, str]:
        ws = words[m.id]
        value = sum(math.log1p(df[w] - 1) for w in ws) if len(ws) >= 3 else -1.0
        return (-value / max(1.0, len(m.text) / 160), m.id)  # long rambles pay for length

    chosen: list[MemoryItem] = []
    for m in sorted(members, key=score):
        if words[m.id] and any(words[m.id] <= words[c.id] for c in chosen):
            continue
        chosen.append(m)
        if len(chosen) >= limit:
            break
    return chosen


def extractive_text(group: Group, members: Sequence[MemoryItem],
                    cfg: ConsolidationConfig) -> str:
    chosen = central(members, cfg.max_summary_items, content_words(group.label))
    title = (f"Profile of {group.label}" if group.kind == "profile"
             else f"Summary of topic {group.label!r}")
    lines = [f"{title} (from {len(members)} memories)."]
    for mtype, name in _SECTION.items():
        texts = [_sentence(m.text) for m in chosen if m.memory_type == mtype]
        if texts:
            lines.append(f"{name}: " + " ".join(texts))
    return _cap("\n".join(lines))


def llm_text(llm: LLM, group: Group, members: Sequence[MemoryItem],
             cfg: ConsolidationConfig) -> str | None:
    chosen = central(members, cfg.max_summary_items, content_words(group.label))
    what = (f"a short profile of {group.label}" if group.kind == "profile"
            else f"a short summary of the topic {group.label!r}")
    facts = "\n".join(f"- {_sentence(m.text)}" for m in chosen)
    answer = llm.chat([
        {"role": "system", "content": "You condense notes faithfully. Use only the notes."},
        {"role": "user", "content": f"Notes:\n{facts}\n\nWrite {what} in 2-4 sentences."},
    ], max_new_tokens=160).text.strip()
    if not answer:
        return None
    title = (f"Profile of {group.label}" if group.kind == "profile"
             else f"Summary of topic {group.label!r}")
    return _cap(f"{title} (from {len(members)} memories). {answer}")


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def _cap(text: str) -> str:
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS].rsplit(" ", 1)[0] + " ..."


# --- planning -------------------------------------------------------------------------------
def plan_syntheses(groups: Sequence[Group], live: dict[str, MemoryItem],
                   existing: Sequence[MemoryItem], versions_after: dict[str, int],
                   cfg: ConsolidationConfig,
                   write_text: Callable[[Group, list[MemoryItem]], str]) -> list[Action]:
    """New, regenerated and retired synthesised memories. `live`: the memories that stay
    active after this run's merges; `versions_after`: their versions once the run's writes
    land (so the recorded source versions match what a later run will see)."""
    current = {_synth(i)["key"]: i for i in existing if _synth(i).get("key")}
    actions: list[Action] = []
    wanted = set()
    for group in groups:
        wanted.add(group.key)
        members = [live[i] for i in group.member_ids if i in live]
        sources = {m.id: versions_after.get(m.id, m.version) for m in members}
        old = current.get(group.key)
        if old is not None:
            why = _changes(_synth(old).get("sources") or {}, sources)
            if not why:
                continue
            reason = f"regenerate: {why}"
        else:
            reason = (f"new {group.kind}: {len(members)} memories about {group.label}"
                      if group.kind == "profile" else
                      f"new topic summary: {len(members)} memories on {group.label!r}")
        actions.append(Action(group.kind, reason, list(sources), dict(sources),
                              target_id=old.id if old is not None else None,
                              subject=group.label, key=group.key,
                              text=write_text(group, members)))
    for key, old in sorted(current.items()):
        if key not in wanted:
            actions.append(Action("retire", f"its group ({key}) no longer has enough "
                                  "sources", [old.id], {old.id: old.version},
                                  target_id=old.id, subject=_synth(old).get("label"),
                                  key=key))
    return actions


def synth_metadata(action: Action, run_id: str, method: str,
                   base: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(base or {}), SYNTH_KEY: {
        "kind": action.kind, "key": action.key, "label": action.subject, "run": run_id,
        "method": method, "sources": dict(action.versions)}}


def _synth(item: MemoryItem) -> dict[str, Any]:
    raw = item.metadata.get(SYNTH_KEY)
    return raw if isinstance(raw, dict) else {}


def _changes(recorded: dict[str, Any], now: dict[str, int]) -> str:
    parts = []
    for sid, version in sorted(recorded.items()):
        if sid not in now:
            parts.append(f"source {sid} is no longer active")
        elif int(version) != now[sid]:
            parts.append(f"source {sid} changed (v{version} -> v{now[sid]})")
    added = [s for s in now if s not in recorded]
    if added:
        parts.append(f"{len(added)} new source(s)")
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")
