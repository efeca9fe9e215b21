"""MemOperator's semantic graph: building it and asking it questions (`MemOS.graph`).

The graph lives in the vault (graph_base.py); this module is the Memory API over it, in
cube names and entity names as people use them, for the CLI and for later REST/UI views:

    mos.graph.build("conv")                         # (re)derive from every memory
    mos.graph.entities("conv", prefix="Car")        # most-mentioned first
    mos.graph.entity("conv", "Caroline's sister")   # names, aliases, relative references
    mos.graph.neighbours("conv", "Caroline", hops=2)
    mos.graph.facts("conv", "Caroline", as_of=datetime(2023, 3, 1))
    mos.graph.timeline("conv", "Caroline")          # every statement, with its validity
    mos.graph.changes("conv", "Caroline", since=..., until=...)   # "what changed"
    mos.graph.path("conv", "Boston", "Anna")
    mos.graph.memories("conv", "Anna")              # the memories behind an entity

Building is incremental by default: every commit updates the edges of the memories it
writes (the runtime installs `extract_graph` as the vault's deriver when the `graph`
setting is on). `build` re-derives a whole cube: for vaults written before the graph
existed, after changing the extractor, or to check idempotence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from memosys.errors import NotFoundError, ValidationError
from memosys.infra.vault.graph_base import (
    Entity,
    EntityType,
    GraphStats,
    GraphStore,
    Neighbour,
    Relation,
    entity_key,
)
from memosys.infra.vault.graph_sql import HUB_DEGREE
from memosys.types import MemoryItem, as_utc

if TYPE_CHECKING:
    from memosys.system import MemOS


@dataclass(frozen=True)
class EntityPage:
    """Everything shown about one entity: its facts over time and the memories behind."""

    entity: Entity
    facts: list[Relation]
    neighbours: list[Neighbour]
    memories: list[MemoryItem]


class MemoryGraphAPI:
    def __init__(self, mos: MemOS) -> None:
        self.mos = mos

    @property
    def store(self) -> GraphStore:
        vault = self.mos.vault
        if not isinstance(vault, GraphStore):
            raise ValidationError(f"{type(vault).__name__} has no graph store")
        return vault

    def _cube(self, cube: str) -> str:
        return self.mos.get_cube(cube).id

    # --- building ---------------------------------------------------------------------
    def build(self, cube: str) -> GraphStats:
        """Drop and re-derive the cube's graph from its memories (idempotent)."""
        cube_id = self._cube(cube)
        if self.store.graph_deriver is None:
            raise ValidationError("the graph is switched off (setting graph = false)")
        return self.store.graph_rebuild(cube_id)

    def stats(self, cube: str) -> GraphStats:
        return self.store.graph_stats(self._cube(cube))

    # --- entities ---------------------------------------------------------------------
    def entities(self, cube: str, *, prefix: str | None = None, type: str | None = None,
                 limit: int = 50) -> list[Entity]:
        etype = None
        if type is not None:
            try:
                etype = EntityType(type)
            except ValueError:
                raise ValidationError(
                    f"unknown entity type {type!r}; types: {[t.value for t in EntityType]}"
                ) from None
        if not 1 <= limit <= 10_000:
            raise ValidationError("limit must be between 1 and 10000")
        return self.store.graph_entities(self._cube(cube), prefix=prefix, type=etype,
                                         limit=limit)

    def entity(self, cube: str, name: str) -> Entity:
        """By name, alias, entity id, or a relative reference ("Caroline's sister")."""
        cube_id = self._cube(cube)
        return self._entity(cube_id, name)

    def _entity(self, cube_id: str, name: str) -> Entity:
        if not isinstance(name, str) or not entity_key(name):
            raise ValidationError("an entity name must be a non-empty string")
        found = self.store.graph_find(cube_id, [name]).get(name)
        if found is None and "'s " in name.replace("\u2019", "'"):
            owner, _, role = name.replace("\u2019", "'").partition("'s ")
            holder = self.store.graph_find(cube_id, [owner]).get(owner)
            if holder is not None:
                found = self.store.graph_role(cube_id, holder.id, role.strip().lower())
        if found is None:
            raise NotFoundError(f"no entity {name!r} in this cube")
        return found

    def neighbours(self, cube: str, name: str, *, hops: int = 1, limit: int = 50,
                   co_mentions: bool = True, max_degree: int | None = HUB_DEGREE
                   ) -> list[Neighbour]:
        """Entities near one; hubs (more than `max_degree` relations) are not walked
        through (None: no cut-off)."""
        cube_id = self._cube(cube)
        entity = self._entity(cube_id, name)
        return self.store.graph_neighbours(cube_id, entity.id, hops=hops, limit=limit,
                                           co_mentions=co_mentions, max_degree=max_degree)

    def facts(self, cube: str, name: str, *, as_of: datetime | None = None,
              predicate: str | None = None) -> list[Relation]:
        """Relations of the entity; with `as_of` only those that held at that time."""
        cube_id = self._cube(cube)
        entity = self._entity(cube_id, name)
        return self.store.graph_relations(cube_id, entity.id, as_of=as_utc(as_of),
                                          predicate=predicate)

    def timeline(self, cube: str, name: str) -> list[Relation]:
        """Every statement about the entity in event-time order, ended ones included."""
        return self.facts(cube, name)

    def changes(self, cube: str, name: str, *, since: datetime | None = None,
                until: datetime | None = None) -> list[Relation]:
        """What changed about the entity in [since, until]: statements that began or were
        closed (by a later contradicting one) in that window."""
        since, until = as_utc(since), as_utc(until)

        def inside(at: datetime | None) -> bool:
            return at is not None and (since is None or at >= since) and (
                until is None or at <= until)

        return [r for r in self.facts(cube, name) if inside(r.valid_from) or inside(r.valid_to)]

    def path(self, cube: str, source: str, target: str, *, max_hops: int = 4
             ) -> list[tuple[Entity, str]] | None:
        cube_id = self._cube(cube)
        a, b = self._entity(cube_id, source), self._entity(cube_id, target)
        return self.store.graph_path(cube_id, a.id, b.id, max_hops=max_hops)

    def memories(self, cube: str, name: str, *, limit: int = 20) -> list[MemoryItem]:
        """The memories that mention the entity, newest first."""
        cube_id = self._cube(cube)
        entity = self._entity(cube_id, name)
        ids = self.store.graph_mentioning([entity.id], limit=limit)[entity.id]
        found = self.mos.vault.get_many(ids)
        # as the actor may see them: no one else's private memories, sensitive text masked
        access = self.mos._access
        cube = self.mos.vault.get_cube(cube_id)
        return access.present([found[i] for i in ids if i in found
                               and access.can_see(found[i], cube)])

    def page(self, cube: str, name: str, *, limit: int = 20) -> EntityPage:
        cube_id = self._cube(cube)
        entity = self._entity(cube_id, name)
        return EntityPage(
            entity,
            self.store.graph_relations(cube_id, entity.id),
            self.store.graph_neighbours(cube_id, entity.id, hops=1, limit=limit),
            self.memories(cube, entity.id, limit=limit),
        )
