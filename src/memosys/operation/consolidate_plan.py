"""What a consolidation run proposes (docs/consolidation.md): pure planning over a cube's
active memories and their embeddings, no writes.

* **merge** near-duplicates: same memory type, embedding cosine >= ``merge_cosine``, word
  overlap (Jaccard of content words) >= ``merge_jaccard``, *and* every content word of the
  duplicate is in the survivor (so the survivor's text already holds everything the
  duplicate said; a duplicate with a word the survivor lacks is never merged).
* **contradiction**: two memories about the same subject and attribute ("X lives in A" /
  "X lives in B", "X's job is A" / "X's job is B", or near-identical texts that differ only
  in their numbers) go to the review queue; nothing is settled silently.
* **profile** per user and **topic** summary per topic: see
  :mod:`memosys.operation.consolidate_synth`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from memosys.errors import ValidationError
from memosys.types import MemoryItem, MemoryType

MERGE_TYPES = (MemoryType.FACT, MemoryType.PREFERENCE, MemoryType.PERSONA, MemoryType.EVENT,
               MemoryType.RULE)
"""Episodes and document chunks are raw input and are never merged."""
SYNTH_KEY = "consolidation"
"""`metadata[SYNTH_KEY]` marks a synthesised memory (kind, key, sources, run)."""

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOP = frozenset(
    "a an the and or but of to in on at for with by from as is are was were be been being "
    "it its this that these those i me my you your he she his her they them their we our "
    "so very really just also too do does did has have had will would can could should "
    "about into over than then there here what which who whom how when where why not no "
    "s t".split())


@dataclass(frozen=True)
class ConsolidationConfig:
    merge_cosine: float = 0.90
    """Embedding similarity from which two memories may be duplicates (MiniLM cosine;
    measured on LoCoMo dev: docs/consolidation.md)."""
    merge_jaccard: float = 0.5
    """Content-word overlap the pair must also reach (the lexical check)."""
    contradiction_cosine: float = 0.80
    """Similarity from which two texts that differ only in numbers are a contradiction."""
    profile_min_sources: int = 3
    topic_min_sources: int = 3
    max_summary_items: int = 12
    """Sentences an extractive profile/summary keeps (the most central ones)."""
    synthesis: str = "extractive"
    """"extractive" (no model) or "llm" (the runtime's bound model; falls back to
    extractive when its answer is empty)."""
    merge: bool = True
    synthesise: bool = True
    contradictions: bool = True

    def __post_init__(self) -> None:
        for name in ("merge_cosine", "merge_jaccard", "contradiction_cosine"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not 0.0 < float(value) <= 1.0:
                raise ValidationError(f"{name} must be a number in (0, 1], got {value!r}")
        for name in ("profile_min_sources", "topic_min_sources", "max_summary_items"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, got {value!r}")
        if self.synthesis not in ("extractive", "llm"):
            raise ValidationError("synthesis must be 'extractive' or 'llm'")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ConsolidationConfig:
        raw = dict(raw or {})
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValidationError(f"unknown consolidation setting(s) {sorted(unknown)}; "
                                  f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**raw)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Action:
    """One step of a plan. `item_ids`: merge: survivor first, then the duplicates;
    contradiction: the newer memory, then the older ones; profile/topic: the sources.
    `target_id`: the synthesised memory a profile/topic action rewrites (None: a new one)."""

    kind: str
    """merge | contradiction | profile | topic | retire"""
    reason: str
    item_ids: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    """The version of each memory the action was planned against."""
    target_id: str | None = None
    subject: str | None = None
    key: str | None = None
    """A synthesised memory's identity across runs ("profile:alice", "topic:family")."""
    text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Action:
        return cls(**raw)


def word_sequence(text: str) -> list[str]:
    """Content words in order (lowercase, stop words and possessive 's left out)."""
    out = []
    for w in _WORD.findall(text.lower()):
        w = w.removesuffix("'s")
        if w and w not in _STOP:
            out.append(w)
    return out


def content_words(text: str) -> set[str]:
    return set(word_sequence(text))


def _subsequence(short: Sequence[str], long: Sequence[str]) -> bool:
    """`short`'s words appear in `long` in the same order ("Mel thanks Caro" is not in
    "Caro thanks Mel": same words, another statement)."""
    rest = iter(long)
    return all(any(w == x for x in rest) for w in short)


def is_synthesised(item: MemoryItem) -> bool:
    return isinstance(item.metadata.get(SYNTH_KEY), dict) and \
        item.metadata[SYNTH_KEY].get("kind") in ("profile", "topic")


def quoted_sources(synthesis: MemoryItem, sources: dict[str, MemoryItem]) -> list[str]:
    """The ids of the sources (among `sources`) whose text a synthesised memory holds word
    for word: an extractive summary quotes them, so next to it they say nothing new (a
    paraphrase, e.g. a model-written summary, quotes none)."""
    text = " ".join(synthesis.text.split())
    return [i for i in synthesis.derived_from if i in sources
            and " ".join(sources[i].text.split()).rstrip(".!?") in text]


def _normalised(vectors: dict[str, np.ndarray], ids: Sequence[str]) -> np.ndarray:
    mat = np.stack([np.asarray(vectors[i], dtype=np.float32) for i in ids])
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    return mat / np.maximum(norms, 1e-12)


def _neighbours(mat: np.ndarray, floor: float, block: int = 1024) -> list[list[int]]:
    """For each row, the other rows with cosine >= floor (blockwise, memory-bounded)."""
    out: list[list[int]] = []
    for start in range(0, len(mat), block):
        sims = mat[start:start + block] @ mat.T
        for r, row in enumerate(sims):
            hits = np.nonzero(row >= floor)[0]
            out.append([int(j) for j in hits if j != start + r])
    return out


def plan_merges(items: Sequence[MemoryItem], vectors: dict[str, np.ndarray],
                cfg: ConsolidationConfig) -> list[Action]:
    """Greedy: the memory with the most content words claims, as survivor, every similar
    memory of its type whose content words it contains (deterministic: ties by id)."""
    actions: list[Action] = []
    by_type: dict[MemoryType, list[MemoryItem]] = {}
    for item in items:
        if item.memory_type in MERGE_TYPES and not is_synthesised(item) and item.id in vectors:
            by_type.setdefault(item.memory_type, []).append(item)
    for group in by_type.values():
        if len(group) < 2:
            continue
        seqs = [word_sequence(i.text) for i in group]
        words = [set(q) for q in seqs]
        order = sorted(range(len(group)), key=lambda k: (-len(words[k]), group[k].id))
        near = _neighbours(_normalised(vectors, [i.id for i in group]), cfg.merge_cosine)
        claimed: set[int] = set()
        for s in order:
            if s in claimed:
                continue
            dups = []
            for d in sorted(near[s], key=lambda k: group[k].id):
                if d in claimed or d == s or not words[d]:
                    continue
                if not words[d] <= words[s] or not _subsequence(seqs[d], seqs[s]):
                    continue  # the duplicate says something the survivor does not
                jacc = len(words[d] & words[s]) / len(words[d] | words[s])
                if jacc >= cfg.merge_jaccard:
                    dups.append(d)
            if not dups:
                continue
            claimed.add(s)
            claimed.update(dups)
            survivor = group[s]
            members = [survivor, *(group[d] for d in dups)]
            actions.append(Action(
                "merge",
                f"{len(dups)} near-duplicate(s) of this {survivor.memory_type.value} "
                f"(cosine >= {cfg.merge_cosine:g}, word overlap >= {cfg.merge_jaccard:g}, "
                "every word already in the survivor, in order)",
                [m.id for m in members], {m.id: m.version for m in members},
                target_id=survivor.id))
    return actions


# --- contradictions -------------------------------------------------------------------------
_SUBJ = r"^(?P<s>[A-Z][\w\-]*(?: [A-Z][\w\-]*)?)"
_SINGLE = (r"(?:favou?rite|fave) [a-z]+|name|full name|age|job|occupation|birthday|"
           r"hometown|home town|address|email|phone number|wife|husband|partner|boss|"
           r"employer|manager|landlord|doctor")
_ATTRIBUTE_PATTERNS = (
    re.compile(_SUBJ + rf"'s (?P<a>{_SINGLE}) (?:is|was) (?P<v>[^.;,!?]+)"),
    re.compile(_SUBJ + r" (?P<a>lives in|lives at|works at|works as|works for|is from|"
               r"was born in|was born on|is married to|studies at) (?P<v>[^.;,!?]+)"),
    re.compile(_SUBJ + r" is (?P<v>\d+)(?P<a> years old)"),
)
"""Single-valued statements at the start of a memory: a second value is a contradiction
(many-valued ones, "likes", "visited", are not)."""


def attribute_of(text: str) -> tuple[str, str, str] | None:
    """(subject, attribute, value) of a single-valued statement, or None."""
    for pattern in _ATTRIBUTE_PATTERNS:
        m = pattern.search(text)
        if m:
            value = " ".join(sorted(content_words(m.group("v"))))
            if value:
                return m.group("s").lower(), m.group("a").strip().lower(), value
    return None


def plan_contradictions(items: Sequence[MemoryItem], vectors: dict[str, np.ndarray],
                        cfg: ConsolidationConfig, already: set[frozenset[str]]
                        ) -> list[Action]:
    """Pairs that cannot both be true; `already`: pairs queued by an earlier run."""
    pool = [i for i in items if i.memory_type in MERGE_TYPES and not is_synthesised(i)]
    pairs: dict[frozenset[str], str] = {}
    by_key: dict[tuple[str, str], list[tuple[MemoryItem, str]]] = {}
    for item in pool:
        attr = attribute_of(item.text)
        if attr:
            by_key.setdefault(attr[:2], []).append((item, attr[2]))
    for (subject, attribute), group in by_key.items():
        for n, (a, va) in enumerate(group):
            for b, vb in group[n + 1:]:
                if va != vb:
                    pairs.setdefault(frozenset((a.id, b.id)),
                                     f"same subject and attribute ({subject!r}, "
                                     f"{attribute!r}) with different values")
    with_vec = [i for i in pool if i.id in vectors]
    if len(with_vec) > 1:
        near = _neighbours(_normalised(vectors, [i.id for i in with_vec]),
                           cfg.contradiction_cosine)
        words = [content_words(i.text) for i in with_vec]
        for a, others in enumerate(near):
            for b in others:
                if b <= a or with_vec[a].memory_type != with_vec[b].memory_type:
                    continue
                diff = words[a] ^ words[b]
                if words[a] - words[b] and words[b] - words[a] and \
                        all(w.isdigit() for w in diff):
                    pairs.setdefault(frozenset((with_vec[a].id, with_vec[b].id)),
                                     "the same statement with different numbers")
    by_id = {i.id: i for i in pool}
    actions = []
    for pair, reason in sorted(pairs.items(), key=lambda kv: sorted(kv[0])):
        if pair in already:
            continue
        older, newer = sorted((by_id[i] for i in pair), key=lambda i: (i.event_time, i.id))
        actions.append(Action("contradiction", reason, [newer.id, older.id],
                              {newer.id: newer.version, older.id: older.version}))
    return actions
