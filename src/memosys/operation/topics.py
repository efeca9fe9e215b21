"""MemOperator's multi-level index: cube -> topics -> memories (`MemOS.topics`,
`MemOS.topic`, `MemOS.overview`; docs/graph.md, "Topics").

The index lives in the vault (`infra/vault/topic_sql.py`) and is kept current by every
commit when the `topics` setting is on (the runtime installs a `TopicPolicy`). This module
is the Memory API over it, with the runtime's permission checks, plus:

- `summarise`: label and summary written by the bound model for topics that only have
  keyword ones (a visible job the caller runs; never inside a write);
- `overview`: "what do you know about me": the largest topics and the most-mentioned
  entities, of one user's memories if asked;
- `TopicStage`: topics as coarse keys in retrieval (a switchable pipeline stage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from memosys.errors import NotFoundError, ValidationError
from memosys.infra.vault.graph_base import Entity, GraphStore
from memosys.infra.vault.topic_sql import SQLTopics, Topic, TopicPolicy, _snippet
from memosys.types import MemoryItem

if TYPE_CHECKING:
    from memosys.models.llm import LLM
    from memosys.system import MemOS

__all__ = ["Overview", "Topic", "TopicPolicy", "TopicStage", "TopicsAPI"]


@dataclass(frozen=True)
class Overview:
    """What the cube knows (about `user`, if given): its main topics and entities."""

    cube_id: str
    user: str | None
    topics: list[Topic]
    entities: list[Entity]
    memories: int
    """Memories in the topics listed (of `user`, if given)."""


def store_of(mos: MemOS) -> SQLTopics:
    vault = mos.vault
    if not isinstance(vault, SQLTopics):
        raise ValidationError(f"{type(vault).__name__} has no topic index")
    return vault


class TopicsAPI:
    def __init__(self, mos: MemOS) -> None:
        self.mos = mos

    @property
    def store(self) -> SQLTopics:
        return store_of(self.mos)

    def _visible(self, topic: Topic) -> Topic:
        """The topic with only the members this actor may see."""
        access = self.mos._access
        if access.unrestricted or not topic.memory_ids:
            return topic
        cube = self.mos.vault.get_cube(topic.cube_id)
        found = self.mos.vault.get_many(list(topic.memory_ids))
        ids = tuple(i for i in topic.memory_ids if i in found and access.can_see(found[i], cube))
        return replace(topic, memory_ids=ids)

    def list(self, cube: str, *, limit: int = 100) -> list[Topic]:
        if not 1 <= limit <= 10_000:
            raise ValidationError("limit must be between 1 and 10000")
        cube_id = self.mos.get_cube(cube).id
        return [self._visible(t) for t in self.store.topics_list(cube_id, limit=limit)]

    def get(self, topic_id: str) -> Topic:
        if not isinstance(topic_id, str) or not topic_id.strip():
            raise ValidationError("a topic id must be a non-empty string")
        found = self.store.topic_get(topic_id)
        if found is None:
            raise NotFoundError(f"no topic {topic_id!r}")
        try:
            self.mos.get_cube(found.cube_id)
        except NotFoundError:
            raise NotFoundError(f"no topic {topic_id!r}") from None
        return self._visible(found)

    def memories(self, topic_id: str, *, limit: int = 50) -> list[MemoryItem]:
        """The topic's memories this actor may see, most central first."""
        topic = self.get(topic_id)
        ids = list(topic.memory_ids[:limit])
        found = self.mos.vault.get_many(ids)
        return self.mos._access.present([found[i] for i in ids if i in found])

    def rebuild(self, cube: str) -> int:
        """Cluster the cube again from scratch (vaults written before topics existed, or
        after changing the threshold); returns the number of topics."""
        cube_id = self.mos.get_cube(cube, need="write").id
        return self.store.topics_rebuild(cube_id)

    def overview(self, cube: str, user: str | None = None, *, topics: int = 10,
                 entities: int = 10) -> Overview:
        cube_id = self.mos.get_cube(cube).id
        ranked, top_entities = self.store.topic_overview(cube_id, user, topics=topics,
                                                         entities=entities)
        listed = [t for tid, _ in ranked if (t := self.store.topic_get(tid)) is not None]
        found: list[Entity] = []
        vault = self.mos.vault
        if isinstance(vault, GraphStore) and top_entities:
            by_id = vault.graph_find(cube_id, [eid for eid, _ in top_entities])
            found = [by_id[eid] for eid, _ in top_entities if eid in by_id]
        return Overview(cube_id, user, [self._visible(t) for t in listed], found,
                        sum(n for _, n in ranked))

    # --- model summaries --------------------------------------------------------------
    def summarise(self, cube: str, *, min_size: int = 3, limit: int = 20,
                  llm: LLM | None = None) -> int:
        """Have the model write a label and a one-sentence summary for the largest topics
        that only have keyword ones; returns how many were written. A topic that lost a
        member meanwhile is skipped (its summary could name the memory that left)."""
        cube_id = self.mos.get_cube(cube, need="write").id
        model = llm or self.mos.llm
        written = 0
        for topic in self.store.topics_list(cube_id, limit=10_000, members=12):
            if written >= limit:
                break
            if topic.summary_by == "model" or topic.size < min_size:
                continue
            found = self.mos.vault.get_many(list(topic.memory_ids))
            texts = [found[i].text for i in topic.memory_ids if i in found
                     and found[i].visibility != "private" and not found[i].sensitivity]
            if not texts:
                continue
            label, summary = describe(model, texts, topic.keywords)
            if label and self.store.topic_set_summary(topic.id, topic.revision, label,
                                                      summary):
                written += 1
        return written


_LABEL = re.compile(r"^\s*(?:title|label|topic)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_SUMMARY = re.compile(r"^\s*summary\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def describe(llm: LLM, texts: list[str], keywords: tuple[str, ...]) -> tuple[str, str]:
    """A short title and a one-sentence summary of a topic's memories, by the model
    (greedy, so the same memories give the same words). Falls back to the keywords for
    whatever the model's answer does not give."""
    listing = "\n".join(f"- {_snippet(t, 200)}" for t in texts[:12])
    prompt = [
        {"role": "system", "content": "You name and summarise groups of notes."},
        {"role": "user", "content": (
            "Here are notes that belong together:\n" + listing + "\n\nAnswer in two lines:\n"
            "Title: <at most five words>\nSummary: <one sentence saying what they are about>")},
    ]
    answer = llm.chat(prompt, max_new_tokens=80).text
    label_m, summary_m = _LABEL.search(answer), _SUMMARY.search(answer)
    label = (label_m.group(1) if label_m else "").strip().strip('"*').strip()[:80]
    summary = (summary_m.group(1) if summary_m else "").strip().strip('"*').strip()[:300]
    if not label:
        label = ", ".join(keywords[:3])
    if not summary:
        summary = f"Notes about {', '.join(keywords[:6]) or label}."
    return label, summary


# --- retrieval --------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicSearchConfig:
    weight: float = 0.25
    """Boost (in fused-score units) for a candidate in the topic nearest the query
    (LoCoMo dev: 0.25 with one topic was the best of 0.25/0.5/1.0, docs/graph.md)."""
    topics: int = 1
    """Topics taken per cube; the k-th nearest gets weight / k."""
    min_similarity: float = 0.3
    add_members: int = 0
    """Members of the nearest topic added to the pool when no retriever found them."""


class TopicStage:
    """Topics as coarse keys: candidates that belong to the topics nearest the query's
    embedding get a boost (a stage of `HybridRetriever`, inserted before "context")."""

    name = "topics"

    def __init__(self, vault: Any, config: TopicSearchConfig | None = None) -> None:
        if not isinstance(vault, SQLTopics):
            raise TypeError(f"{type(vault).__name__} has no topic index")
        self.vault = vault
        self.config = config or TopicSearchConfig()

    def enabled(self, config: object) -> bool:
        return True

    def __call__(self, run: Any) -> None:
        if run.qvec is None:
            run.qvec = run.retriever.embedder.embed([run.query])[0]
        cfg = self.config
        cube_ids = list(run.flt.cube_ids) or [c.id for c in self.vault.list_cubes()]
        weights: dict[str, float] = {}
        for cube_id in cube_ids:
            for rank, (topic_id, sim) in enumerate(
                    self.vault.topic_nearest(cube_id, run.qvec, k=cfg.topics), start=1):
                if sim >= cfg.min_similarity:
                    weights[topic_id] = cfg.weight / rank
        if not weights:
            return
        of = self.vault.topic_of(list(run.pool))
        for item_id, cand in run.pool.items():
            w = weights.get(of.get(item_id, ""), 0.0)
            if w:
                cand.parts[self.name] = w
        if cfg.add_members:
            best = max(weights, key=lambda t: weights[t])
            topic = self.vault.topic_get(best, members=cfg.add_members)
            for item_id in topic.memory_ids if topic else ():
                if item_id not in run.pool:
                    run.add_candidate(item_id, pooled=False).parts[self.name] = weights[best]
