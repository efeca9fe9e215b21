"""`/api/v1` routes of tool and skill memory (docs/skills.md): record tool calls and
trajectories, distil skills, list/get them, find the skills for a task.

Bodies reuse the runtime's own models (memosys.operation.skills_models), so a bad tool name,
a non-boolean `success` or an oversized result is a 422 before anything runs; the runtime
checks permissions and audits as for every other write.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field

from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.operation.skills import skill_view
from memosys.operation.skills_models import (
    MAX_RESULT_CHARS,
    MAX_STEPS,
    MAX_TASK_CHARS,
    Pitfall,
    SkillStep,
    ToolCall,
)
from memosys.system import MemOS
from memosys.types import MemoryItem, Visibility

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, tags=["skills"])
Runtime = Annotated[MemOS, Depends(request_runtime)]
_SHORT = 256


class _Who(BaseModel):
    user: str | None = Field(default=None, max_length=_SHORT)
    agent: str | None = Field(default=None, max_length=_SHORT)
    session: str | None = Field(default=None, max_length=_SHORT)
    visibility: Visibility = Visibility.CUBE


class ToolCallIn(ToolCall, _Who):
    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(default=None, max_length=MAX_TASK_CHARS)
    trajectory_id: str | None = Field(default=None, max_length=52)


class TrajectoryIn(_Who):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS)
    success: bool = Field(strict=True)
    steps: list[ToolCall] | None = Field(default=None, max_length=MAX_STEPS)
    """None: collect the tool calls recorded with `trajectory_id`."""
    outcome: str | None = Field(default=None, max_length=MAX_RESULT_CHARS)
    trajectory_id: str | None = Field(default=None, max_length=52)
    distil: bool = True
    """A successful run queues a skills_distil job (the scheduler's worker)."""


class DistilIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_support: int = Field(default=3, ge=2, le=1000)
    dry_run: bool = False
    use_model: bool = False
    """Word names and `when` with the configured model (LLM-free by default)."""


class FindIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS)
    top_k: int = Field(default=3, ge=1, le=100)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    cubes: list[str] = Field(default_factory=list, max_length=64)
    """More cubes to search besides the one in the path."""


class SkillOut(BaseModel):
    id: str
    cube_id: str
    version: int
    state: str
    text: str
    name: str
    when: str | None
    steps: list[SkillStep]
    pitfalls: list[Pitfall]
    support: int
    failures: int
    origin: str
    derived_from: list[str]
    updated_at: str

    @classmethod
    def of(cls, item: MemoryItem) -> SkillOut:
        return cls(**skill_view(item))


class SkillPage(BaseModel):
    items: list[SkillOut]


class SkillMatchOut(BaseModel):
    score: float
    matched: str
    """The example task (or `when`) of the skill the task was closest to."""
    skill: SkillOut


class FindOut(BaseModel):
    matches: list[SkillMatchOut]


class DistilOut(BaseModel):
    id: str
    cube_id: str
    trajectories: int
    successful: int
    clusters: int
    min_support: int
    dry_run: bool
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    retired: list[str]
    skills: list[dict[str, Any]]


def _who(body: _Who) -> dict[str, Any]:
    return {"user": body.user, "agent": body.agent, "session": body.session,
            "visibility": body.visibility}


@router.post("/cubes/{cube}/tool-calls", response_model=MemoryItem,
             status_code=status.HTTP_201_CREATED)
def record_tool_call(cube: str, body: ToolCallIn, mos: Runtime) -> MemoryItem:
    """Record one tool call as a `tool_call` memory (tag `tool:<name>`; with
    `trajectory_id` also `trajectory:<id>`, so a trajectory can collect it)."""
    return mos.record_tool_call(
        cube, body.tool, body.arguments, body.result, body.success, body.duration_ms,
        task=body.task, trajectory_id=body.trajectory_id, error=body.error, **_who(body))


@router.post("/cubes/{cube}/trajectories", response_model=MemoryItem,
             status_code=status.HTTP_201_CREATED)
def record_trajectory(cube: str, body: TrajectoryIn, mos: Runtime) -> MemoryItem:
    """Record one agent run for a task: its steps, or (no `steps`) the tool calls recorded
    with `trajectory_id`. A successful one queues skill distillation in the background."""
    steps = None if body.steps is None else [s.model_dump() for s in body.steps]
    return mos.record_trajectory(
        cube, body.task, steps, body.success, outcome=body.outcome,
        trajectory_id=body.trajectory_id, distil=body.distil, **_who(body))


@router.post("/cubes/{cube}/skills/distil", response_model=DistilOut)
def distil_skills(cube: str, mos: Runtime, body: DistilIn | None = None) -> DistilOut:
    """Distil similar successful trajectories into skills now (idempotent: an unchanged
    cluster writes nothing; `dry_run` only reports the plan)."""
    body = body or DistilIn()
    report = mos.distil_skills(cube, min_support=body.min_support, dry_run=body.dry_run,
                               use_model=body.use_model)
    return DistilOut(**report.as_dict())


@router.get("/cubes/{cube}/skills", response_model=SkillPage)
def list_skills(
    cube: str, mos: Runtime,
    include_retired: Annotated[bool, Query(description="Also archived skills")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> SkillPage:
    """The cube's skills, newest first."""
    items = mos.skills.list(cube, include_retired=include_retired, limit=limit,
                            offset=offset)
    return SkillPage(items=[SkillOut.of(i) for i in items])


@router.post("/cubes/{cube}/skills/find", response_model=FindOut)
def find_skills(cube: str, body: FindIn, mos: Runtime) -> FindOut:
    """Skills that apply to a task, best first; none when no skill is similar enough."""
    matches = mos.find_skills([cube, *body.cubes], body.task, body.top_k,
                              threshold=body.threshold)
    return FindOut(matches=[SkillMatchOut(score=round(m.score, 4), matched=m.matched,
                                          skill=SkillOut.of(m.item)) for m in matches])


@router.get("/skills/{skill_id}", response_model=SkillOut)
def get_skill(skill_id: str, mos: Runtime) -> SkillOut:
    """One skill with its steps, pitfalls and the trajectories it came from."""
    return SkillOut.of(mos.skills.get(skill_id))
