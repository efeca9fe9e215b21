"""Request and response bodies of the REST API (`/api/v1`), shared with `memosys.Client`.

Items and cubes are the runtime's own pydantic models (`MemoryItem`, `MemCube`), serialised
with `model_dump(mode="json")`, so the wire format is the Python data model. Request models
forbid unknown fields: a typo is a 422, never a silently ignored option.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memosys.infra.vault.base import Job, VersionRecord
from memosys.operation.retrieval import SearchHit
from memosys.system import MAX_TOP_K
from memosys.types import (
    MAX_TEXT_CHARS,
    MemCube,
    MemoryItem,
    MemoryState,
    MemoryType,
    Visibility,
)

MAX_PAGE = 1000
"""Largest `limit` of one page of any list."""
MAX_MESSAGES = 1000
MAX_TAGS = 64
_SHORT = 256
"""Longest user / agent / session / cube / id argument."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CubeCreate(_Body):
    name: str = Field(max_length=128, description="Letters, digits, '_', '-', '.'")
    owner: str | None = Field(default=None, max_length=_SHORT)
    description: str = Field(default="", max_length=10_000)


class CubePage(BaseModel):
    items: list[MemCube]
    next_offset: int | None


class MessageIn(_Body):
    role: str = Field(default="user", max_length=32)
    content: str = Field(max_length=MAX_TEXT_CHARS)
    name: str | None = Field(default=None, max_length=_SHORT)
    id: str | None = Field(default=None, max_length=_SHORT)
    timestamp: datetime | None = None


class DocumentIn(_Body):
    content: str = Field(description="Text or markdown; stored as chunks")
    uri: str = Field(max_length=2048, description="Where the document came from")
    title: str | None = Field(default=None, max_length=1024)
    max_chunk_chars: int | None = Field(default=None, ge=200, le=MAX_TEXT_CHARS)


class MemoriesAdd(_Body):
    """Exactly one of `text`, `messages`, `document`."""

    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    messages: list[MessageIn] | None = Field(default=None, max_length=MAX_MESSAGES)
    document: DocumentIn | None = None
    memory_type: MemoryType | None = None
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    user: str | None = Field(default=None, max_length=_SHORT)
    agent: str | None = Field(default=None, max_length=_SHORT)
    session: str | None = Field(default=None, max_length=_SHORT)
    document_uri: str | None = Field(default=None, max_length=2048)
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    owner: str | None = Field(default=None, max_length=_SHORT)
    visibility: Visibility = Visibility.CUBE
    metadata: dict[str, Any] = Field(default_factory=dict)
    infer: bool = Field(default=False, description="Also extract memories with the MemReader")
    wait: bool = Field(default=True, description="With infer: extract now, or queue a job")


class JobOut(BaseModel):
    id: str
    kind: str
    cube_id: str | None
    state: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(id=job.id, kind=job.kind, cube_id=job.cube_id, state=job.state,
                   attempts=job.attempts, created_at=job.created_at,
                   updated_at=job.updated_at, payload=job.payload, result=job.result,
                   error=job.error)


class MemoriesAdded(BaseModel):
    items: list[MemoryItem]
    job: JobOut | None = None
    """The queued extraction job (infer with wait=false)."""
    extraction: dict[str, Any] | None = None
    """What extraction did (infer with wait=true)."""


class MemoryPage(BaseModel):
    items: list[MemoryItem]
    next_offset: int | None


class Filters(_Body):
    memory_types: list[MemoryType] = Field(default_factory=list)
    states: list[MemoryState] = Field(default_factory=lambda: [MemoryState.ACTIVE],
                                      description="[] for every state")
    user: str | None = Field(default=None, max_length=_SHORT)
    agent: str | None = Field(default=None, max_length=_SHORT)
    session: str | None = Field(default=None, max_length=_SHORT)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    since: datetime | None = None
    until: datetime | None = None
    valid_at: datetime | None = None

    def as_runtime(self) -> dict[str, Any]:
        return {"memory_types": [t.value for t in self.memory_types],
                "states": [s.value for s in self.states], "user": self.user,
                "agent": self.agent, "session": self.session, "tags": list(self.tags),
                "since": self.since, "until": self.until, "valid_at": self.valid_at}


class SearchRequest(_Body):
    query: str = Field(max_length=10_000)
    cube_ids: list[str] | None = Field(default=None, max_length=100,
                                       description="Cube names or ids; all when omitted")
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    filters: Filters | None = None


class Hit(BaseModel):
    item: MemoryItem
    score: float
    ranks: dict[str, int]
    scores: dict[str, float]
    provenance: dict[str, Any]

    @classmethod
    def of(cls, hit: SearchHit) -> Hit:
        return cls(item=hit.item, score=hit.score, ranks=hit.ranks, scores=hit.scores,
                   provenance=hit.provenance)


class SearchResponse(BaseModel):
    hits: list[Hit]


class MemoryUpdate(_Body):
    """Only the fields given change; the rest are kept."""

    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    memory_type: MemoryType | None = None
    tags: list[str] | None = Field(default=None, max_length=MAX_TAGS)
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    visibility: Visibility | None = None
    state: MemoryState | None = None
    metadata: dict[str, Any] | None = None
    owner: str | None = Field(default=None, max_length=_SHORT)
    sensitivity: list[str] | None = Field(default=None, max_length=MAX_TAGS)
    expected_version: int | None = Field(
        default=None, ge=1, description="Fail with 409 unless this is the current version")


class VersionOut(BaseModel):
    version: int
    op: str
    clock: int
    at: datetime
    item: MemoryItem

    @classmethod
    def of(cls, record: VersionRecord) -> VersionOut:
        return cls(version=record.item.version, op=record.op, clock=record.clock,
                   at=record.at, item=record.item)


class HistoryPage(BaseModel):
    items: list[VersionOut]
    """Oldest first."""
    next_offset: int | None


class RollbackRequest(_Body):
    version: int = Field(ge=1)


class Purged(BaseModel):
    purged: int


class FeedbackRequest(_Body):
    item_id: str = Field(max_length=_SHORT)
    delta: float = Field(ge=-1000, le=1000, description="Added to the item's feedback score")


class Health(BaseModel):
    status: str
    version: str
    storage: str
    embedder: str
    auth: str
    """"api_key", or "open" (no keys configured: loopback clients only)."""
