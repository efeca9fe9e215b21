"""`/api/v1/...` graph and topic endpoints (docs/graph.md, docs/rest.md), mounted by
server.py. Every call runs as the request's actor through `MemOS.graph` / `MemOS.topics`,
so a caller sees only cubes it may read (others' cubes are a 404, as for memories), and
memories behind an entity or a topic only as that caller may see them.

Entity names travel as query parameters (`?name=Caroline's sister`), so any name works:

- `GET /api/v1/cubes/{cube}/entities?prefix=&type=&limit=`: most-mentioned first
- `GET /api/v1/cubes/{cube}/entity?name=`: the entity page (facts over time, neighbours,
  the memories behind it)
- `GET /api/v1/cubes/{cube}/facts?name=&as_of=&predicate=`: what held at a date
- `GET /api/v1/cubes/{cube}/timeline?name=`: every statement, with its validity
- `GET /api/v1/cubes/{cube}/neighbours?name=&hops=&limit=&max_degree=`
- `GET /api/v1/cubes/{cube}/path?source=&target=&max_hops=`
- `GET /api/v1/cubes/{cube}/topics?limit=`, `GET /api/v1/topics/{topic_id}?limit=`
- `GET /api/v1/cubes/{cube}/overview?user=`: topics and entities ("what do you know
  about me")
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from memosys.infra.vault.graph_base import Entity, EntityType, Neighbour, Relation
from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.operation.topics import Topic
from memosys.system import MemOS
from memosys.types import MemoryItem

router = APIRouter(prefix="/api/v1", tags=["graph"], responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]
Name = Annotated[str, Query(min_length=1, max_length=256, description="Entity name, alias, "
                            "id or \"X's role\"")]
Limit = Annotated[int, Query(ge=1, le=1000)]


class EntityOut(BaseModel):
    id: str
    name: str
    type: EntityType
    mentions: int
    aliases: list[str]
    owner_id: str | None = None
    role: str | None = None

    @classmethod
    def of(cls, e: Entity) -> EntityOut:
        return cls(id=e.id, name=e.name, type=e.type, mentions=e.mentions,
                   aliases=list(e.aliases), owner_id=e.owner_id, role=e.role)


class Source(BaseModel):
    id: str
    version: int


class FactOut(BaseModel):
    subject: EntityOut
    predicate: str
    object: EntityOut
    valid_from: datetime | None
    valid_to: datetime | None
    confidence: float
    functional: bool
    sources: list[Source]

    @classmethod
    def of(cls, r: Relation) -> FactOut:
        return cls(subject=EntityOut.of(r.subject), predicate=r.predicate,
                   object=EntityOut.of(r.object), valid_from=r.valid_from,
                   valid_to=r.valid_to, confidence=r.confidence, functional=r.functional,
                   sources=[Source(id=i, version=v) for i, v in r.sources])


class NeighbourOut(BaseModel):
    entity: EntityOut
    hops: int
    via: str
    weight: float

    @classmethod
    def of(cls, n: Neighbour) -> NeighbourOut:
        return cls(entity=EntityOut.of(n.entity), hops=n.hops, via=n.via, weight=n.weight)


class EntityPageOut(BaseModel):
    entity: EntityOut
    facts: list[FactOut]
    neighbours: list[NeighbourOut]
    memories: list[MemoryItem]


class PathStep(BaseModel):
    entity: EntityOut
    predicate: str
    """The edge into this step ("" for the source)."""


class PathOut(BaseModel):
    found: bool
    steps: list[PathStep]


class TopicOut(BaseModel):
    id: str
    cube_id: str
    label: str
    summary: str
    keywords: list[str]
    size: int
    summary_by: str
    updated_at: datetime
    memory_ids: list[str]

    @classmethod
    def of(cls, t: Topic) -> TopicOut:
        return cls(id=t.id, cube_id=t.cube_id, label=t.label, summary=t.summary,
                   keywords=list(t.keywords), size=t.size, summary_by=t.summary_by,
                   updated_at=t.updated_at, memory_ids=list(t.memory_ids))


class TopicPageOut(BaseModel):
    topic: TopicOut
    memories: list[MemoryItem]


class OverviewOut(BaseModel):
    cube_id: str
    user: str | None
    memories: int
    topics: list[TopicOut]
    entities: list[EntityOut]


@router.get("/cubes/{cube}/entities", response_model=list[EntityOut])
def entities(mos: Runtime, cube: str, prefix: Annotated[str | None, Query(max_length=256)]
             = None, type: EntityType | None = None, limit: Limit = 50) -> list[EntityOut]:
    """The cube's entities, most-mentioned first; `prefix` matches names and aliases."""
    found = mos.graph.entities(cube, prefix=prefix, type=type.value if type else None,
                               limit=limit)
    return [EntityOut.of(e) for e in found]


@router.get("/cubes/{cube}/entity", response_model=EntityPageOut)
def entity_page(mos: Runtime, cube: str, name: Name, limit: Limit = 20) -> EntityPageOut:
    """One entity: its facts over time, its neighbours and the memories behind it."""
    page = mos.graph.page(cube, name, limit=limit)
    return EntityPageOut(entity=EntityOut.of(page.entity),
                         facts=[FactOut.of(r) for r in page.facts],
                         neighbours=[NeighbourOut.of(n) for n in page.neighbours],
                         memories=page.memories)


@router.get("/cubes/{cube}/facts", response_model=list[FactOut])
def facts(mos: Runtime, cube: str, name: Name, as_of: datetime | None = None,
          predicate: Annotated[str | None, Query(max_length=64)] = None) -> list[FactOut]:
    """The entity's relations; with `as_of` only those that held at that time."""
    return [FactOut.of(r) for r in mos.graph.facts(cube, name, as_of=as_of,
                                                   predicate=predicate)]


@router.get("/cubes/{cube}/timeline", response_model=list[FactOut])
def timeline(mos: Runtime, cube: str, name: Name) -> list[FactOut]:
    """Every statement about the entity in event-time order, ended ones included."""
    return [FactOut.of(r) for r in mos.graph.timeline(cube, name)]


@router.get("/cubes/{cube}/neighbours", response_model=list[NeighbourOut])
def neighbours(mos: Runtime, cube: str, name: Name,
               hops: Annotated[int, Query(ge=1, le=4)] = 1, limit: Limit = 50,
               max_degree: Annotated[int, Query(ge=1, le=1_000_000)] = 50
               ) -> list[NeighbourOut]:
    """Entities near one; hubs with more than `max_degree` relations are not walked
    through."""
    return [NeighbourOut.of(n) for n in mos.graph.neighbours(
        cube, name, hops=hops, limit=limit, max_degree=max_degree)]


@router.get("/cubes/{cube}/path", response_model=PathOut)
def path(mos: Runtime, cube: str, source: Name, target: Name,
         max_hops: Annotated[int, Query(ge=1, le=4)] = 4) -> PathOut:
    """A shortest chain of relations between two entities (`found` false: none within
    `max_hops`)."""
    steps = mos.graph.path(cube, source, target, max_hops=max_hops)
    return PathOut(found=steps is not None,
                   steps=[PathStep(entity=EntityOut.of(e), predicate=p) for e, p in steps or []])


@router.get("/cubes/{cube}/topics", response_model=list[TopicOut])
def topics(mos: Runtime, cube: str, limit: Limit = 100) -> list[TopicOut]:
    """The cube's topics (clusters of its memories), largest first."""
    return [TopicOut.of(t) for t in mos.topics(cube, limit=limit)]


@router.get("/topics/{topic_id}", response_model=TopicPageOut)
def topic(mos: Runtime, topic_id: str, limit: Limit = 50) -> TopicPageOut:
    """One topic with its memories, most central first."""
    found = mos.topic(topic_id)
    return TopicPageOut(topic=TopicOut.of(found),
                        memories=mos.topic_index.memories(topic_id, limit=limit))


@router.get("/cubes/{cube}/overview", response_model=OverviewOut)
def overview(mos: Runtime, cube: str,
             user: Annotated[str | None, Query(max_length=256)] = None) -> OverviewOut:
    """What the cube knows (about `user`): its main topics and entities."""
    o = mos.overview(cube, user)
    return OverviewOut(cube_id=o.cube_id, user=o.user, memories=o.memories,
                       topics=[TopicOut.of(t) for t in o.topics],
                       entities=[EntityOut.of(e) for e in o.entities])
