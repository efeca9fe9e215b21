"""`/api/v1` routes for chat with memory and the scheduler's recent decisions.

`POST /api/v1/chat` is `MemOS.chat` as JSON: the answer plus what the scheduler did (which
memories, in which form, why) and what was written back. With `stream: true` the answer
comes as server-sent events: `{"delta": "..."}` per text piece, then `{"result": {...}}`
(or `{"error": {...}}`), then `[DONE]`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from memosys.errors import MemosysError, NotFoundError, PermissionDeniedError
from memosys.interface.openai_compat import MAX_CHAT_TOKENS, sse
from memosys.interface.rest_auth import caller_user, request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS
from memosys.types import MAX_TEXT_CHARS

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, tags=["chat"])

Runtime = Annotated[MemOS, Depends(request_runtime)]
_SCAN = 100_000
"""How far back the decisions endpoint looks (the scheduler keeps a bounded history)."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(max_length=32, description="system, user or assistant")
    content: str = Field(max_length=MAX_TEXT_CHARS)
    name: str | None = Field(default=None, max_length=256)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    cube_ids: list[str] | None = Field(default=None, max_length=100, description=(
        "Cubes to read; the first is written. Default: the cube 'default'"))
    user: str | None = Field(default=None, max_length=256,
                             description="Ignored when the API key names a user")
    session: str | None = Field(default=None, max_length=256)
    max_tokens: int = Field(default=256, ge=1, le=MAX_CHAT_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    remember: bool = True
    stream: bool = False


class ChatAnswer(BaseModel):
    text: str
    decisions: list[dict[str, Any]]
    usage: dict[str, Any]
    finish_reason: str
    model: str
    cube_id: str
    cube_ids: list[str]
    scheduling_id: str
    events: list[str]
    activation: dict[str, Any] | None
    written: list[str]
    job_id: str | None
    ttft_s: float | None


@router.post("/chat", response_model=ChatAnswer,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "The answer, or with stream=true events"}})
def chat(body: ChatRequest, request: Request, mos: Runtime) -> ChatAnswer | StreamingResponse:
    """Answer with memory: memories for the last user message go into the prompt (as an
    activation cache or as text), the model answers, the new turns are remembered."""
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    kwargs: dict[str, Any] = {
        "cube_ids": body.cube_ids, "user": caller_user(request) or body.user,
        "session": body.session, "max_tokens": body.max_tokens,
        "temperature": body.temperature, "remember": body.remember}
    if not body.stream:
        return ChatAnswer(**mos.chat(messages, **kwargs).as_dict())
    stream = mos.chat(messages, stream=True, **kwargs)
    first = next(stream, None)  # errors before the first token are plain JSON errors

    def events() -> Iterator[str]:
        finished = False
        try:
            if first is not None:
                yield sse({"delta": first})
                for piece in stream:
                    yield sse({"delta": piece})
            result = stream.result
            finished = True
            yield sse({"result": ChatAnswer(**result.as_dict()).model_dump(mode="json")})
        except MemosysError as exc:
            finished = True
            yield sse({"error": {"code": exc.code, "message": str(exc)}})
        finally:
            if not finished:
                stream.close()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


class DecisionsPage(BaseModel):
    items: list[dict[str, Any]]
    """Newest first: one scheduling record per chat call (query, cubes, model, decisions
    per memory with form and reason, activation cache used, events)."""


@router.get("/scheduler/decisions", response_model=DecisionsPage)
def scheduler_decisions(mos: Runtime,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> DecisionsPage:
    """What the scheduler chose for recent answers — only answers over cubes the caller
    can read (the scheduler keeps one history for the whole installation)."""
    readable: dict[str, bool] = {}

    def visible(cube_id: str) -> bool:
        if cube_id not in readable:
            try:
                mos.get_cube(cube_id)
                readable[cube_id] = True
            except (NotFoundError, PermissionDeniedError):
                readable[cube_id] = False
        return readable[cube_id]

    items = [r.as_dict() for r in mos.scheduler.recent_decisions(_SCAN)
             if all(visible(c) for c in r.cube_ids)]
    return DecisionsPage(items=items[:limit])
