"""MCP tools of tool and skill memory (docs/skills.md): record tool calls and trajectories,
distil skills, find the skills for a task. Registered by `memosys.interface.mcp`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations

from memosys.operation.skills import skill_view
from memosys.system import MemOS

_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False)
_IDEMPOTENT = ToolAnnotations(read_only_hint=False, destructive_hint=False,
                              idempotent_hint=True)

Call = Callable[[Context, Callable[[MemOS], Any]], Awaitable[Any]]
JsonValue = str | int | float | bool | dict[str, Any] | list[Any] | None


def skill_tools(call: Call, item: Callable[[Any], dict[str, Any]],
                ) -> list[tuple[Callable[..., Any], ToolAnnotations]]:
    """The tool functions; `item` renders a memory the way the other tools do."""

    async def record_tool_call(
        ctx: Context,
        tool: str,
        arguments: dict[str, Any] | None = None,
        result: JsonValue = None,
        success: bool = True,
        duration_ms: float | None = None,
        error: str | None = None,
        task: str | None = None,
        trajectory_id: str | None = None,
        cube: str = "default",
        session: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Record that an agent called a tool (name, arguments, result, success, duration)
        as a tool_call memory (tag tool:<name>), so later searches recall what was tried and
        what came of it. Give the same `trajectory_id` to every call of one run, then
        record_trajectory with that id to close the run. The cube is created if missing."""
        def run(mos: MemOS) -> dict[str, Any]:
            mos.ensure_cube(cube, owner=user)
            return item(mos.record_tool_call(
                cube, tool, arguments, result, success, duration_ms, task=task,
                trajectory_id=trajectory_id, error=error, user=user, session=session))
        return await call(ctx, run)

    async def record_trajectory(
        ctx: Context,
        task: str,
        success: bool,
        steps: list[dict[str, Any]] | None = None,
        trajectory_id: str | None = None,
        outcome: str | None = None,
        cube: str = "default",
        session: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Record one agent run for a task and whether it succeeded: its `steps`
        ([{tool, arguments, result, success, duration_ms, error}], in order), or none to
        collect the tool calls recorded with `trajectory_id`. Similar successful runs are
        distilled into skills in the background (see find_skills)."""
        def run(mos: MemOS) -> dict[str, Any]:
            mos.ensure_cube(cube, owner=user)
            return item(mos.record_trajectory(
                cube, task, steps, success, trajectory_id=trajectory_id, outcome=outcome,
                user=user, session=session))
        return await call(ctx, run)

    async def distil_skills(
        ctx: Context,
        cube: str = "default",
        min_support: int = 3,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Distil the cube's similar successful trajectories (at least `min_support` of
        them) into skill memories now: name, when it applies, steps, pitfalls. Idempotent;
        `dry_run` only reports the plan."""
        return await call(ctx, lambda mos: mos.distil_skills(
            cube, min_support=min_support, dry_run=dry_run).as_dict())

    async def find_skills(
        ctx: Context,
        task: str,
        cubes: list[str] | None = None,
        top_k: int = 3,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        """Skills (procedures learned from earlier successful runs) that apply to `task`,
        best first, with their steps and pitfalls; an empty list when none is similar
        enough. Call it before starting a multi-step task."""
        return await call(ctx, lambda mos: {"skills": [
            m.as_dict() for m in mos.find_skills(cubes or ["default"], task, top_k,
                                                 threshold=threshold)]})

    async def list_skills(ctx: Context, cube: str = "default",
                          include_retired: bool = False) -> dict[str, Any]:
        """The skills of a cube (newest first), with steps, pitfalls and sources."""
        return await call(ctx, lambda mos: {"skills": [
            skill_view(s) for s in mos.skills.list(cube, include_retired=include_retired)]})

    return [
        (record_tool_call, _WRITE),
        (record_trajectory, _WRITE),
        (distil_skills, _IDEMPOTENT),
        (find_skills, _READ),
        (list_skills, _READ),
    ]
