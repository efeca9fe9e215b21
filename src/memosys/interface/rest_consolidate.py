"""`/api/v1` routes for consolidation runs (memosys.operation.consolidate;
docs/consolidation.md): run (or dry-run, or queue) one, read one, roll one back.

Permissions are the request's runtime view's: running or rolling back needs `write` on
the cube, reading a run needs `read`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]


class ConsolidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: bool = False
    wait: bool = True
    """False: queue the run for the scheduler's worker and return at once (state queued)."""
    config: dict[str, Any] = Field(default_factory=dict)
    """ConsolidationConfig fields, e.g. {"merge_cosine": 0.92, "synthesis": "llm"}."""


class RunOut(BaseModel):
    """A run: id, cube_id, dry_run, state (queued | planned | done | rolled_back | failed),
    plan (actions: kind, reason, item_ids, versions, target_id, subject, key, text),
    changes (item_id, op, before, after), reviews, counts, seconds, ..."""

    run: dict[str, Any]


@router.post("/cubes/{cube}/consolidate", response_model=RunOut, tags=["consolidation"])
def consolidate(cube: str, mos: Runtime, body: ConsolidateRequest | None = None) -> RunOut:
    """Merge near-duplicates, synthesise profiles and topic summaries, queue
    contradictions for review (a dry run only plans)."""
    body = body or ConsolidateRequest()
    run = mos.consolidate(cube, dry_run=body.dry_run, config=body.config, wait=body.wait)
    return RunOut(run=run.as_dict())


@router.get("/consolidations/{run_id}", response_model=RunOut, tags=["consolidation"])
def consolidation_run(run_id: str, mos: Runtime) -> RunOut:
    """A run's plan and record."""
    return RunOut(run=mos.consolidation_run(run_id).as_dict())


@router.post("/consolidations/{run_id}/rollback", response_model=RunOut,
             tags=["consolidation"])
def rollback_consolidation(run_id: str, mos: Runtime) -> RunOut:
    """Undo the whole run as one unit (409 when a memory it wrote changed since)."""
    return RunOut(run=mos.rollback_consolidation(run_id).as_dict())
