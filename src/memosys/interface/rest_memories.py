"""`/api/v1` routes for cubes, memories, search, history, feedback and jobs.

Each endpoint is a thin translation of one Memory API call (memosys.system.MemOS): the
runtime validates and checks permissions, so REST behaves exactly like embedded use.
Endpoints are plain `def`: FastAPI runs them in its thread pool, and the runtime is safe to
call from several threads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status

from memosys.errors import ValidationError
from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.interface.rest_models import (
    MAX_PAGE,
    CubeCreate,
    CubePage,
    FeedbackRequest,
    HistoryPage,
    Hit,
    JobOut,
    MemoriesAdd,
    MemoriesAdded,
    MemoryPage,
    MemoryUpdate,
    Purged,
    RollbackRequest,
    SearchRequest,
    SearchResponse,
    VersionOut,
)
from memosys.system import MemOS
from memosys.types import MemCube, MemoryItem, MemoryState, MemoryType

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=10**9, description="Items to skip")]
PathId = Annotated[str, "a memory id"]


def _page(rows: list[Any], limit: int, offset: int) -> tuple[list[Any], int | None]:
    """`rows` holds up to limit+1 entries: the extra one only says another page exists."""
    return rows[:limit], (offset + limit if len(rows) > limit else None)


# --- cubes ------------------------------------------------------------------------------
@router.get("/cubes", response_model=CubePage, tags=["cubes"])
def list_cubes(mos: Runtime, limit: Limit = 100, offset: Offset = 0) -> CubePage:
    """Cubes this caller can see, oldest first."""
    items, nxt = _page(mos.list_cubes()[offset : offset + limit + 1], limit, offset)
    return CubePage(items=items, next_offset=nxt)


@router.post("/cubes", response_model=MemCube, status_code=status.HTTP_201_CREATED,
             tags=["cubes"])
def create_cube(body: CubeCreate, mos: Runtime) -> MemCube:
    """Create a cube bound to the server's embedder (409 if the name exists)."""
    return mos.create_cube(body.name, owner=body.owner, description=body.description)


@router.get("/cubes/{cube}", response_model=MemCube, tags=["cubes"])
def get_cube(cube: str, mos: Runtime) -> MemCube:
    """A cube by name or id."""
    return mos.get_cube(cube)


@router.get("/cubes/{cube}/stats", tags=["cubes"])
def cube_stats(cube: str, mos: Runtime) -> dict[str, Any]:
    """Memory counts of one cube, by state and by type."""
    return mos.stats(mos.get_cube(cube).id)["cubes"][0]  # type: ignore[no-any-return]


# --- memories ---------------------------------------------------------------------------
@router.post("/cubes/{cube}/memories", response_model=MemoriesAdded,
             status_code=status.HTTP_201_CREATED, tags=["memories"])
def add_memories(cube: str, body: MemoriesAdd, mos: Runtime) -> MemoriesAdded:
    """Store a text, chat messages (each kept verbatim as an episode) or a document (as
    chunks). Acknowledged only once durable. `infer` also extracts memories (facts,
    preferences, events ...); with `wait: false` that is a background job (see /jobs)."""
    given = [name for name in ("text", "messages", "document")
             if getattr(body, name) is not None]
    if len(given) != 1:
        raise ValidationError("give exactly one of text, messages or document")
    if body.document is not None:
        doc = body.document
        extra = {"max_chunk_chars": doc.max_chunk_chars} if doc.max_chunk_chars else {}
        items = mos.reader.add_document(
            cube, doc.content, uri=doc.uri, title=doc.title, user=body.user,
            session=body.session, tags=body.tags, valid_from=body.valid_from,
            visibility=body.visibility, infer=body.infer, wait=body.wait, **extra)
    else:
        items = mos.add(
            cube, body.text,
            messages=[m.model_dump(exclude_none=True) for m in body.messages]
            if body.messages is not None else None,
            memory_type=body.memory_type, tags=body.tags, user=body.user, agent=body.agent,
            session=body.session, document_uri=body.document_uri,
            valid_from=body.valid_from, valid_to=body.valid_to, owner=body.owner,
            visibility=body.visibility, metadata=body.metadata, infer=body.infer,
            wait=body.wait)
    result, job = getattr(items, "result", None), getattr(items, "job", None)
    return MemoriesAdded(items=list(items), job=JobOut.of(job) if job else None,
                         extraction=result.summary() if result else None)


@router.get("/cubes/{cube}/memories", response_model=MemoryPage, tags=["memories"])
def list_memories(
    cube: str,
    mos: Runtime,
    limit: Limit = 100,
    offset: Offset = 0,
    memory_type: Annotated[list[MemoryType] | None, Query()] = None,
    state: Annotated[list[MemoryState] | None, Query(
        description="Default: active only")] = None,
    tag: Annotated[list[str] | None, Query(max_length=64)] = None,
    user: Annotated[str | None, Query(max_length=256)] = None,
    agent: Annotated[str | None, Query(max_length=256)] = None,
    session: Annotated[str | None, Query(max_length=256)] = None,
    since: Annotated[datetime | None, Query(description="Event time from")] = None,
    until: Annotated[datetime | None, Query(description="Event time until")] = None,
    valid_at: Annotated[datetime | None, Query(description="Valid at this instant")] = None,
) -> MemoryPage:
    """A cube's memories, newest first, one page at a time (`next_offset` is null on the
    last page). Repeat `state` for several states."""
    filters = {"memory_types": [t.value for t in memory_type or ()],
               "states": [s.value for s in state] if state else ["active"],
               "tags": list(tag or ()), "user": user, "agent": agent, "session": session,
               "since": since, "until": until, "valid_at": valid_at}
    rows = mos.list(cube, filters, limit=limit + 1, offset=offset)
    items, nxt = _page(rows, limit, offset)
    return MemoryPage(items=items, next_offset=nxt)


@router.post("/search", response_model=SearchResponse, tags=["memories"])
def search(body: SearchRequest, mos: Runtime) -> SearchResponse:
    """Hybrid (BM25 + vector) search over the named cubes, or every visible cube."""
    filters = body.filters.as_runtime() if body.filters else None
    hits = mos.search(body.query, body.cube_ids, body.top_k, filters)
    return SearchResponse(hits=[Hit.of(h) for h in hits])


@router.get("/memories/{item_id}", response_model=MemoryItem, tags=["memories"])
def get_memory(item_id: PathId, mos: Runtime) -> MemoryItem:
    """One memory with its header and statistics."""
    return mos.get(item_id)


@router.patch("/memories/{item_id}", response_model=MemoryItem, tags=["memories"])
def update_memory(item_id: PathId, body: MemoryUpdate, mos: Runtime) -> MemoryItem:
    """Write a new version with the given fields changed (the old one stays in history)."""
    changes = body.model_dump(exclude_unset=True, exclude={"expected_version"})
    return mos.update(item_id, expected_version=body.expected_version, **changes)


@router.delete("/memories/{item_id}", response_model=MemoryItem, tags=["memories"])
def delete_memory(item_id: PathId, mos: Runtime) -> MemoryItem:
    """Soft delete: a new version in state `deleted`, restorable by rollback."""
    return mos.delete(item_id)


@router.post("/memories/{item_id}/purge", response_model=Purged, tags=["memories"])
def purge_memory(item_id: PathId, mos: Runtime) -> Purged:
    """Erase for good: every version, index entry and vector. Cannot be undone."""
    return Purged(purged=mos.purge([item_id]))


@router.get("/memories/{item_id}/history", response_model=HistoryPage, tags=["memories"])
def memory_history(item_id: PathId, mos: Runtime, limit: Limit = 100,
                   offset: Offset = 0) -> HistoryPage:
    """Every version of a memory, oldest first."""
    records = mos.history(item_id)[offset : offset + limit + 1]
    items, nxt = _page(records, limit, offset)
    return HistoryPage(items=[VersionOut.of(r) for r in items], next_offset=nxt)


@router.post("/memories/{item_id}/rollback", response_model=MemoryItem, tags=["memories"])
def rollback_memory(item_id: PathId, body: RollbackRequest, mos: Runtime) -> MemoryItem:
    """Make an old version current again, as a new version."""
    return mos.rollback(item_id, body.version)


@router.post("/feedback", response_model=MemoryItem, tags=["memories"])
def feedback(body: FeedbackRequest, mos: Runtime) -> MemoryItem:
    """Add `delta` to a memory's feedback score; returns the memory."""
    mos.feedback(body.item_id, body.delta)
    return mos.get(body.item_id)


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(job_id: str, mos: Runtime) -> JobOut:
    """Status of a background job (e.g. an extraction queued with `infer`, `wait: false`)."""
    return JobOut.of(mos.job(job_id))
