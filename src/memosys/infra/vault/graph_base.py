"""The semantic graph's part of the storage contract: entity nodes and the edges between
memories and entities, kept in the same database (and the same transactions) as the items.

Nodes and edges (docs/graph.md):
- **entity**: canonical name, type (person, place, organisation, object, event, concept),
  owner cube; its aliases are the distinct surface forms of its mentions, so an alias is
  never kept apart from the memory that used it.
- **MENTIONS** memory -> entity (the memory's id and version, the surface form, whether
  the entity is the speaker or named in the text).
- **RELATION** entity -> entity: a typed predicate with `valid_from`/`valid_to`, the
  source memory id and version, and a confidence. A *functional* predicate (lives_in,
  works_at, spouse ...) holds one object at a time: a later statement with another object
  closes the earlier one (`valid_to` = the later one's `valid_from`).
- **FOLLOWS** memory -> the memory before it in its session (arrival order).
- **DERIVED_FROM** memory -> each memory it was derived from (`MemoryItem.derived_from`).

What a memory contributes is computed by a *deriver* (`GraphDeriver`, LLM-free by default:
`memosys.operation.graph_extract`), which the runtime installs on the vault. The vault
calls it inside `commit`, so an add, edit, rollback or delete changes the memory's edges in
the same transaction as the memory itself. A deleted memory contributes no MENTIONS or
RELATION edges; an invalidated or superseded one keeps them as history (its relations end
at its `valid_to`), so "as of" questions about the past still find them. `purge` erases
every edge of the purged memories and every entity no remaining memory mentions, and
renames entities whose name came only from them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache

from memosys.types import MemoryItem


class EntityType(StrEnum):
    PERSON = "person"
    PLACE = "place"
    ORGANISATION = "organisation"
    OBJECT = "object"
    EVENT = "event"
    CONCEPT = "concept"


# --- what a deriver says about one memory ---------------------------------------------------
@dataclass(frozen=True)
class EntityRef:
    """An entity as a memory names it. `owner` + `role` make a relative reference
    ("my sister" said by Caroline: owner "Caroline", role "sister"): resolved to the entity
    the graph knows as Caroline's sister, else kept as a placeholder "Caroline's sister"
    until the conversation says who she is."""

    name: str
    type: EntityType
    owner: str | None = None
    role: str | None = None
    speaker: bool = False
    """The memory's speaker (said by), not named in its text."""
    weak: bool = False
    """Only a guess (a capitalised sentence opener): kept only if the cube already knows
    an entity of that name, never creates one."""

    @property
    def key(self) -> str:
        return entity_key(self.name if self.role is None else f"{self.owner}'s {self.role}")


@dataclass(frozen=True)
class RelationRef:
    """subject -predicate-> object, both names of entities in the same `MemoryGraph`
    (by `EntityRef.key`)."""

    subject: str
    predicate: str
    object: str
    confidence: float = 0.6
    functional: bool = False


@dataclass
class MemoryGraph:
    entities: list[EntityRef] = field(default_factory=list)
    relations: list[RelationRef] = field(default_factory=list)


GraphDeriver = Callable[[MemoryItem], MemoryGraph]
"""What one memory contributes to the graph; must be deterministic (rebuilds rely on it)."""


@lru_cache(maxsize=65_536)
def entity_key(name: str) -> str:
    """Case, spacing, possessives and a leading article do not make another entity."""
    words = name.replace("\u2019", "'").lower().split()
    if words and words[0] == "the" and len(words) > 1:
        words = words[1:]
    if words and words[-1].endswith("'s"):
        words[-1] = words[-1][:-2]
    elif words and words[-1].endswith("s'"):
        words[-1] = words[-1][:-1]
    return " ".join(w.strip(".,;:!?\"()[]") for w in words).strip()


# --- what the store answers ----------------------------------------------------------------
@dataclass(frozen=True)
class Entity:
    id: str
    cube_id: str
    name: str
    type: EntityType
    mentions: int = 0
    """Memories that mention it (as speaker or in the text)."""
    aliases: tuple[str, ...] = ()
    owner_id: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class Relation:
    subject: Entity
    predicate: str
    object: Entity
    valid_from: datetime | None
    valid_to: datetime | None
    """When a later statement closed it (functional predicates), else the source
    memory's own `valid_to`; None: still holds."""
    confidence: float
    sources: tuple[tuple[str, int], ...]
    """(memory id, version) of every memory that states it."""
    functional: bool = False

    def holds_at(self, at: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_to is None or at < self.valid_to)


@dataclass(frozen=True)
class Neighbour:
    entity: Entity
    hops: int
    via: str
    """The predicate of the last edge on the shortest path ("co-mention" for entities
    only mentioned together)."""
    weight: float
    """Product of the edge confidences along the path."""


@dataclass(frozen=True)
class GraphStats:
    entities: int
    mentions: int
    relations: int
    follows: int
    derived: int


class GraphStore(ABC):
    """Graph queries every backend answers (mixed into `Vault`). Cube ids, not names."""

    graph_deriver: GraphDeriver | None = None

    def set_graph_deriver(self, deriver: GraphDeriver | None) -> None:
        """Install what `commit` uses to compute a memory's edges (None: only FOLLOWS and
        DERIVED_FROM edges are kept, and edited memories lose their entity edges)."""
        self.graph_deriver = deriver

    @abstractmethod
    def graph_rebuild(self, cube_id: str) -> GraphStats:
        """Drop the cube's graph and derive it again from its memories in arrival order,
        in one transaction. Deterministic: a second rebuild gives the same graph."""

    @abstractmethod
    def graph_entities(self, cube_id: str, *, prefix: str | None = None,
                       type: EntityType | None = None, limit: int = 50) -> list[Entity]:
        """Most-mentioned first; `prefix` matches the start of the name or an alias."""

    @abstractmethod
    def graph_find(self, cube_id: str, names: list[str]) -> dict[str, Entity]:
        """Entities by name, alias or id (entity_key-normalised), for those that exist."""

    @abstractmethod
    def graph_role(self, cube_id: str, owner_id: str, role: str) -> Entity | None:
        """The entity that is `owner`'s `role` (a RELATION owner -role-> X, the newest
        still valid, else a placeholder)."""

    @abstractmethod
    def graph_relations(self, cube_id: str, entity_id: str | None = None, *,
                        as_of: datetime | None = None,
                        predicate: str | None = None) -> list[Relation]:
        """Relations of an entity (as subject or object), oldest first; with `as_of`
        only those that held then."""

    @abstractmethod
    def graph_neighbours(self, cube_id: str, entity_id: str, *, hops: int = 1,
                         limit: int = 50, co_mentions: bool = True,
                         max_degree: int | None = 50) -> list[Neighbour]:
        """Entities within `hops` RELATION (and co-mention) edges, nearest first; entities
        with more than `max_degree` edges are reached but not walked through (None: no
        cut-off)."""

    @abstractmethod
    def graph_path(self, cube_id: str, source_id: str, target_id: str, *,
                   max_hops: int = 4, max_degree: int | None = None
                   ) -> list[tuple[Entity, str]] | None:
        """A shortest RELATION path: [(source, ""), (next, predicate), ..., (target, p)]."""

    @abstractmethod
    def graph_degrees(self, cube_id: str, entity_ids: Sequence[str]) -> dict[str, int]:
        """RELATION edges (either direction) of each entity."""

    @abstractmethod
    def graph_mentioning(self, entity_ids: list[str], *, limit: int = 200
                         ) -> dict[str, list[str]]:
        """Memory ids that mention each entity, newest first."""

    @abstractmethod
    def graph_memory_entities(self, item_ids: list[str]) -> dict[str, list[str]]:
        """Entity ids each memory mentions."""

    @abstractmethod
    def graph_follows(self, item_id: str) -> tuple[str | None, str | None]:
        """(the memory before, the memory after) in the session."""

    @abstractmethod
    def graph_derived(self, item_id: str) -> tuple[list[str], list[str]]:
        """(memories it was derived from, memories derived from it)."""

    @abstractmethod
    def graph_stats(self, cube_id: str) -> GraphStats:
        """Counts of the cube's nodes and edges."""
