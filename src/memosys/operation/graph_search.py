"""The graph stage of retrieval: entity linking of the query, then expansion along the
graph (a `Stage` of `HybridRetriever`, inserted before "context"; switched on by the
`graph_search` setting or `memosys bench locomo --graph on`).

1. **link**: the names in the query (`named_entities`), its relative references
   ("Melanie's kids", "her kids" when the query names one person) and its content words
   are looked up among the entities of the searched cubes.
2. **weigh**: an entity mentioned by a large share of the cube (the speakers of a chat)
   says nothing about which memory is meant and is skipped; the others weigh by rarity
   (idf, scaled to 0-1).
3. **expand**: memories that mention a linked entity get `weight * idf`; with
   `hops >= 1`, memories that mention an entity one RELATION away get that times
   `hop_decay` times the edge's confidence times its validity (1 for a relation that
   holds in the time the query names, or still holds when it names none; 0.5 for one that
   has ended; 0.25 for one outside the named time), and so on for a second hop. Hubs
   (entities with more than `max_degree` relations) are not walked through.

Scores are added to the fused score in its units (standard deviations), like the
speaker and time boosts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from memosys.infra.vault.base import ItemFilter, Vault
from memosys.infra.vault.fts_query import query_terms
from memosys.infra.vault.graph_base import Entity, EntityType, GraphStore, Relation
from memosys.infra.vault.graph_sql import HUB_DEGREE
from memosys.operation.graph_extract import (
    canonical_role,
    named_entities,
    relative_references,
)

_PRONOUN_ROLE = re.compile(r"\b(?:his|her|their)\s+(\w+)", re.IGNORECASE)


@dataclass(frozen=True)
class GraphSearchConfig:
    weight: float = 1.0
    """Boost for a memory that mentions the rarest linked entity."""
    hops: int = 1
    """0: only memories of the linked entities; 1: also of their RELATION neighbours;
    2: and of the neighbours' neighbours."""
    hop_decay: float = 0.5
    max_degree: int = HUB_DEGREE
    """Entities with more RELATION edges than this are not expanded (hub cut-off)."""
    max_share: float = 0.05
    """Entities mentioned by more than this share of a cube's memories (and by more than
    `min_mentions`) are not used: in a chat, the speakers."""
    min_mentions: int = 20
    per_entity: int = 50
    """Memories taken per linked entity (newest first)."""
    max_candidates: int = 100


class GraphStage:
    name = "graph"

    def __init__(self, vault: Vault, config: GraphSearchConfig | None = None) -> None:
        if not isinstance(vault, GraphStore):
            raise TypeError(f"{type(vault).__name__} has no graph store")
        self.vault = vault
        self.graph: GraphStore = vault
        self.config = config or GraphSearchConfig()

    def link(self, query: str, cube_id: str) -> list[Entity]:
        """The entities of a cube that the query refers to."""
        names = [e.name for e in named_entities(query)]
        words = [w for w in query_terms(query) if len(w) > 2]
        found = self.graph.graph_find(cube_id, names + words)
        linked = {e.id: e for e in found.values()}
        persons = list({e.id: e for n in names if (e := found.get(n)) is not None
                        and e.type == EntityType.PERSON}.values())
        roles: list[tuple[Entity | None, str]] = [
            (self.graph.graph_find(cube_id, [r.owner or ""]).get(r.owner or ""), r.role or "")
            for r in relative_references(query, None)]
        if len(persons) == 1:  # "her kids" in a question about one person
            roles += [(persons[0], role) for m in _PRONOUN_ROLE.finditer(query)
                      if (role := canonical_role(m.group(1))) is not None]
        for holder, role in roles:
            if holder is not None and role:
                entity = self.graph.graph_role(cube_id, holder.id, role)
                if entity is not None:
                    linked[entity.id] = entity
        return list(linked.values())

    def expand(self, query: str, flt: ItemFilter, base: dict[str, float],
               windows: Sequence[tuple[datetime, datetime]] = ()) -> dict[str, float]:
        cfg = self.config
        cube_ids = list(flt.cube_ids) or [c.id for c in self.vault.list_cubes()]
        scores: dict[str, float] = {}
        for cube_id in cube_ids:
            total = self.vault.count(ItemFilter(cube_ids=(cube_id,)))
            if total < 2:
                continue
            weights: dict[str, float] = {}
            for entity in self.link(query, cube_id):
                w = self._rarity(entity, total)
                if w > 0:
                    weights[entity.id] = max(weights.get(entity.id, 0.0), w)
            frontier = dict(weights)
            for _ in range(cfg.hops):
                degrees = self.graph.graph_degrees(cube_id, list(frontier))
                reached: dict[str, float] = {}
                for eid, w in frontier.items():
                    if degrees.get(eid, 0) > cfg.max_degree:
                        continue  # a hub: its memories count, its neighbours would be all
                    for rel in self.graph.graph_relations(cube_id, eid):
                        other = rel.object if rel.subject.id == eid else rel.subject
                        if other.id in weights:
                            continue
                        rarity = self._rarity(other, total)
                        hop = (w * cfg.hop_decay * rel.confidence * _validity(rel, windows)
                               * rarity)
                        if hop > reached.get(other.id, 0.0):
                            reached[other.id] = hop
                weights.update(reached)
                frontier = {k: v for k, v in reached.items() if v > 0}
                if not frontier:
                    break
            if not weights:
                continue
            mentioning = self.graph.graph_mentioning(list(weights), limit=cfg.per_entity)
            for eid, ids in mentioning.items():
                for item_id in ids:
                    scores[item_id] = scores.get(item_id, 0.0) + cfg.weight * weights[eid]
        if not scores:
            return {}
        best = sorted(scores, key=lambda i: (-scores[i], i))[: cfg.max_candidates]
        fresh = tuple(i for i in best if i not in base)
        allowed = set(best) - set(fresh)
        if fresh:  # found by the graph, not by a filtered search: check the filter
            wanted = tuple(i for i in fresh if not flt.ids or i in flt.ids)
            if wanted:
                allowed |= {i.id for i in self.vault.list_items(replace(flt, ids=wanted),
                                                                limit=len(wanted))}
        return {i: scores[i] for i in best if i in allowed}

    # The stage protocol of branch `retrieval` (`HybridRetriever.insert_stage`): the same
    # work on its `SearchRun`, so either hook can run this stage.
    def enabled(self, config: object) -> bool:
        return True

    def __call__(self, run: Any) -> None:
        for item_id, boost in self.expand(run.query, run.flt, run.base,
                                          run.windows).items():
            run.add_candidate(item_id, pooled=True).parts[self.name] = boost

    def _rarity(self, entity: Entity, total: int) -> float:
        mentions = max(1, entity.mentions)
        if mentions > max(self.config.max_share * total, self.config.min_mentions):
            return 0.0
        return math.log(total / mentions) / math.log(total)


def _validity(rel: Relation, windows: Sequence[tuple[datetime, datetime]]) -> float:
    """How much a relation counts for this query: it held in the time the query names
    (or, naming none, still holds): 1; it has ended: 0.5; it held only at other times
    than those named: 0.25."""
    if windows:
        for start, end in windows:
            if (rel.valid_from is None or rel.valid_from <= end) and (
                    rel.valid_to is None or rel.valid_to > start):
                return 1.0
        return 0.25
    return 0.5 if rel.valid_to is not None else 1.0
