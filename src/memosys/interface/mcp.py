"""The MCP server: memosys's Memory API as Model Context Protocol tools (docs/mcp.md).

Built on the official `mcp` SDK (2.x: `mcp.server.mcpserver.MCPServer`). One server object
serves both transports:
- stdio (`memosys mcp`): the process acts as the local installation admin, or as the
  principal of the API key it was started with;
- streamable HTTP (`memosys mcp --transport http`, memosys.interface.mcp_http): each tool
  call acts as the principal of the API key on the request that carried it.

Tools run the blocking runtime calls in worker threads, so one slow call (a chat, an
embedding batch) never stalls the other sessions on the HTTP transport. A memosys error
reaches the client as a tool error whose text starts with the stable error code
("not_found: ...", "invalid_input: ...").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from memosys.errors import MemosysError
from memosys.interface.mcp_skills import skill_tools
from memosys.operation.retrieval import SearchHit
from memosys.system import MemOS, SearchFilters
from memosys.types import MemoryItem

T = TypeVar("T")
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

ActorResolver = Callable[[Context], MemOS]
"""Picks the runtime view a tool call acts through (see `build_mcp_server`)."""

INSTRUCTIONS = (
    "memosys is a long-term memory store. Use search_memories before answering questions "
    "about the user or past work, add_memory to remember durable facts, preferences and "
    "decisions, update_memory to correct one, forget_memory when asked to forget; chat asks "
    "memosys's own model, which reads memory first. record_tool_call/record_trajectory "
    "record what an agent did; find_skills before a multi-step task returns procedures "
    "learned from earlier successful runs. Memories live in named cubes (default: "
    "'default'). Ids come from search/add results."
)

_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False)
_DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True)


def build_mcp_server(
    runtime: MemOS, actor: ActorResolver | None = None, *, log_level: LogLevel = "WARNING"
) -> MCPServer:
    """The memosys MCP server over `runtime`.

    `actor(ctx)` returns the runtime view a tool call acts through; by default the runtime
    itself (the local admin, as the CLI acts). The HTTP transport passes a resolver that
    reads the principal authenticated for the request."""
    resolve: ActorResolver = actor or (lambda _ctx: runtime)
    server = MCPServer("memosys", instructions=INSTRUCTIONS, version=_version(),
                       log_level=log_level)

    async def call(ctx: Context, fn: Callable[[MemOS], T]) -> T:
        mos = resolve(ctx)
        try:
            return await anyio.to_thread.run_sync(partial(fn, mos))
        except MemosysError as exc:
            raise ToolError(f"{exc.code}: {exc}") from exc

    for tool, hints in _tools(call):
        server.add_tool(tool, annotations=hints, structured_output=True)
    return server


Call = Callable[[Context, Callable[[MemOS], T]], Awaitable[T]]


def _tools(call: Call[Any]) -> list[tuple[Callable[..., Any], ToolAnnotations]]:
    """The tool functions; their signatures and docstrings are the tools' schemas."""

    async def list_cubes(ctx: Context) -> dict[str, Any]:
        """List the memory cubes this caller can see, with their memory counts."""
        def run(mos: MemOS) -> dict[str, Any]:
            stats = {c["id"]: c for c in mos.stats()["cubes"]}
            return {"cubes": [
                {"id": c.id, "name": c.name, "owner": c.owner, "description": c.description,
                 "active_memories": stats.get(c.id, {}).get("by_state", {}).get("active", 0)}
                for c in mos.list_cubes()
            ]}
        return await call(ctx, run)

    async def add_memory(
        ctx: Context,
        text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        cube: str = "default",
        memory_type: str | None = None,
        tags: list[str] | None = None,
        user: str | None = None,
        session: str | None = None,
        infer: bool = False,
    ) -> dict[str, Any]:
        """Remember something. Give `text` (stored as one memory, a fact unless
        `memory_type` says otherwise: fact, preference, event, rule, persona, episode,
        document, skill) or `messages` ([{role, content, name?}], each kept verbatim as an
        episode). `infer=true` also extracts facts/preferences from it and reconciles them
        with what is already known. The cube is created if missing."""
        def run(mos: MemOS) -> dict[str, Any]:
            mos.ensure_cube(cube, owner=user)
            items = mos.add(cube, text, messages=messages, memory_type=memory_type,
                            tags=tags or [], user=user, session=session, infer=infer)
            result = getattr(items, "result", None)
            return {"items": [_item(i) for i in items],
                    "extraction": result.summary() if result is not None else None}
        return await call(ctx, run)

    async def search_memories(
        ctx: Context,
        query: str,
        cubes: list[str] | None = None,
        top_k: int = 5,
        memory_types: list[str] | None = None,
        tags: list[str] | None = None,
        user: str | None = None,
        session: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, Any]:
        """Search memories (BM25 + vector, fused) in the given cubes, or all visible
        cubes. Each hit has a score (higher is better, comparable within one search),
        the memory, and its provenance (who/where it came from, version). `since`/`until`
        (ISO date-times) bound the event time."""
        filters = SearchFilters(memory_types=memory_types or (), tags=tags or (), user=user,
                                session=session, since=since, until=until)
        return await call(ctx, lambda mos: {
            "hits": [_hit(h) for h in mos.search(query, cubes or None, top_k, filters)]
        })

    async def get_memory(ctx: Context, memory_id: str) -> dict[str, Any]:
        """One memory with its full header (source, tags, sensitivity, state, version)
        and usage statistics."""
        return await call(ctx, lambda mos: _item(mos.get(memory_id), full=True))

    async def update_memory(
        ctx: Context,
        memory_id: str,
        text: str | None = None,
        memory_type: str | None = None,
        tags: list[str] | None = None,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        """Correct a memory: writes a new version (the old one stays in its history).
        With `expected_version`, fails with a conflict if it changed meanwhile."""
        changes = {k: v for k, v in
                   {"text": text, "memory_type": memory_type, "tags": tags}.items()
                   if v is not None}
        return await call(ctx, lambda mos: _item(
            mos.update(memory_id, expected_version=expected_version, **changes)))

    async def forget_memory(ctx: Context, memory_id: str, purge: bool = False) -> dict[str, Any]:
        """Forget a memory. By default a soft delete (restorable with rollback_memory);
        `purge=true` erases every version, index entry and vector for good."""
        def run(mos: MemOS) -> dict[str, Any]:
            if purge:
                return {"id": memory_id, "purged": mos.purge([memory_id]) == 1}
            item = mos.delete(memory_id)
            return {"id": item.id, "purged": False, "state": item.state.value,
                    "version": item.version}
        return await call(ctx, run)

    async def memory_history(ctx: Context, memory_id: str) -> dict[str, Any]:
        """Every version of a memory, oldest first, with the operation that wrote it."""
        return await call(ctx, lambda mos: {"versions": [
            {"version": r.item.version, "op": r.op, "at": r.at.isoformat(),
             "state": r.item.state.value, "text": r.item.text, "tags": list(r.item.tags)}
            for r in mos.history(memory_id)
        ]})

    async def rollback_memory(ctx: Context, memory_id: str, version: int) -> dict[str, Any]:
        """Make an old version of a memory current again (written as a new version)."""
        return await call(ctx, lambda mos: _item(mos.rollback(memory_id, version)))

    async def chat(
        ctx: Context,
        message: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        cubes: list[str] | None = None,
        user: str | None = None,
        session: str | None = None,
        max_tokens: int = 256,
        remember: bool = True,
    ) -> dict[str, Any]:
        """Answer with memory: give the user's `message` (or a whole conversation as
        `messages` [{role, content}], the last one the user's). The memory scheduler picks
        memories from `cubes` (default: "default"; new turns are written to the first) and
        the bound model answers. Returns the answer, the memories used with the form and
        the reason, token usage, and the ids of the turns remembered (`remember`)."""
        if (message is None) == (messages is None):
            raise ToolError("invalid_input: give exactly one of message or messages")
        convo = messages if messages is not None else [{"role": "user", "content": message}]

        def run(mos: MemOS) -> dict[str, Any]:
            result = mos.chat(convo, cube_ids=cubes or None, user=user, session=session,
                              max_tokens=max_tokens, remember=remember)
            used = [d for d in result.decisions if d.form != "skipped"]
            return {
                "text": result.text,
                "memories_used": [
                    {"memory_id": d.memory_id, "version": d.version, "form": d.form,
                     "section": d.section, "reason": d.reason, "score": d.score}
                    for d in used
                ],
                "skipped": len(result.decisions) - len(used),
                "usage": result.as_dict()["usage"],
                "model": result.model,
                "finish_reason": result.finish_reason,
                "cube_id": result.cube_id,
                "scheduling_id": result.scheduling_id,
                "remembered": list(result.written),
            }
        return await call(ctx, run)

    return [
        (list_cubes, _READ),
        (add_memory, _WRITE),
        (search_memories, _READ),
        (get_memory, _READ),
        (update_memory, _WRITE),
        (forget_memory, _DESTRUCTIVE),
        (memory_history, _READ),
        (rollback_memory, _WRITE),
        (chat, _WRITE),
        *skill_tools(call, _item),  # record_tool_call, record_trajectory, skills (skills.md)
    ]


def _item(item: MemoryItem, *, full: bool = False) -> dict[str, Any]:
    """A memory as tools return it: the header fields an agent acts on, or everything."""
    if full:
        return item.model_dump(mode="json")
    return {
        "id": item.id, "cube_id": item.cube_id, "memory_type": item.memory_type.value,
        "text": item.text, "version": item.version, "state": item.state.value,
        "tags": list(item.tags), "sensitivity": list(item.sensitivity),
        "created_at": item.created_at.isoformat(),
        "valid_from": item.valid_from.isoformat() if item.valid_from else None,
    }


def _hit(hit: SearchHit) -> dict[str, Any]:
    return {"score": hit.score, "ranks": dict(hit.ranks), "memory": _item(hit.item),
            "provenance": hit.provenance}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memosys")
    except PackageNotFoundError:
        return "0"
