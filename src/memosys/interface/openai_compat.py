"""OpenAI-compatible endpoints under `/v1`: any OpenAI client pointed at memosys
(`base_url="http://host:port/v1"`) gets a model with memory.

- `POST /v1/chat/completions` (streaming too): `MemOS.chat` — memories relevant to the last
  user message are read into the prompt, the bound model answers (`settings.llm`: the local
  SmolLM2, or forwarding to an upstream OpenAI-compatible server with `openai:<model>`),
  and the new turns are written back. Whose memory: the user the API key belongs to; in
  open mode (no keys) the request's `user` field. Without `memosys.cube_ids` each user
  chats in their own cube `chat-<user>` (no user: the cube `default`). The answer carries a
  `memosys` object (decisions: which memories, which form, why; what was written).
  Streaming follows OpenAI's SSE chunks; an error after the first chunk arrives as an
  `{"error": ...}` event, before it as a plain JSON error.
- `GET /v1/models`, `GET /v1/models/{model}`: the chat model (ServerConfig.model_name) and
  the embedder (its id, e.g. `minilm-l6-v2`).
- `POST /v1/embeddings`: the runtime's embedder; `encoding_format` float or base64 (the
  official Python client asks for base64 by default). `usage` counts whitespace-separated
  words, an approximation of tokens.

Request models ignore unknown fields (OpenAI clients send many optional parameters such
as `top_p`), unlike the `/api/v1` models, which reject them. Refused (400/422): `n` > 1,
`tools`, `stop`, non-text content parts.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from memosys.errors import MemosysError, NotFoundError, ValidationError
from memosys.interface.rest_auth import caller_user, request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS
from memosys.types import MAX_TEXT_CHARS, new_id

if TYPE_CHECKING:
    from memosys.operation.chat import ChatResult, ChatStream

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]
MAX_EMBED_INPUTS = 2048
MAX_CHAT_TOKENS = 4096
_STARTED = int(time.time())


class _OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "memosys"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def chat_model_name(request: Request) -> str:
    return str(request.app.state.config.model_name)


def _models(request: Request, mos: MemOS) -> list[ModelCard]:
    return [ModelCard(id=chat_model_name(request), created=_STARTED),
            ModelCard(id=mos.embedder.id, created=_STARTED)]


@router.get("/models", response_model=ModelList)
def list_models(request: Request, mos: Runtime) -> ModelList:
    """The chat model with memory and the embedder."""
    return ModelList(data=_models(request, mos))


@router.get("/models/{model}", response_model=ModelCard)
def get_model(model: str, request: Request, mos: Runtime) -> ModelCard:
    for card in _models(request, mos):
        if card.id == model:
            return card
    raise NotFoundError(f"no model {model!r}")


class EmbeddingsRequest(_OpenAIBody):
    input: str | list[str] = Field(description="A text or a list of texts (token arrays "
                                   "are not supported)")
    model: str = Field(max_length=256)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=100_000)
    user: str | None = Field(default=None, max_length=256)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


@router.post("/embeddings", response_model=EmbeddingsResponse)
def embeddings(body: EmbeddingsRequest, mos: Runtime) -> EmbeddingsResponse:
    """Embed texts with the runtime's embedder (the same vectors memories are searched by)."""
    embedder = mos.embedder
    if body.model != embedder.id:
        raise NotFoundError(f"no embedding model {body.model!r}; this server embeds with "
                            f"{embedder.id!r}")
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise ValidationError(f"{embedder.id} embeds in {embedder.dim} dimensions, "
                              f"not {body.dimensions}")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts or len(texts) > MAX_EMBED_INPUTS:
        raise ValidationError(f"input must hold 1 to {MAX_EMBED_INPUTS} texts")
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValidationError(f"input {i} is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise ValidationError(f"input {i} is over {MAX_TEXT_CHARS} characters")
    vectors = np.asarray(embedder.embed(texts), dtype="<f4")
    data: list[Embedding] = []
    for i, vec in enumerate(vectors):
        value: list[float] | str = (
            base64.b64encode(vec.tobytes()).decode("ascii")
            if body.encoding_format == "base64" else vec.tolist()
        )
        data.append(Embedding(index=i, embedding=value))
    words = sum(len(t.split()) for t in texts)
    return EmbeddingsResponse(data=data, model=embedder.id,
                              usage=Usage(prompt_tokens=words, total_tokens=words))


# --- chat completions -------------------------------------------------------------------
class TextPart(_OpenAIBody):
    type: Literal["text"]
    text: str


class ChatMessageIn(_OpenAIBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(description="Text, or a list of text parts")
    name: str | None = Field(default=None, max_length=256)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_OpenAIBody):
    include_usage: bool = False


class MemoryOptions(_OpenAIBody):
    """memosys's own options (`extra_body={"memosys": {...}}` in the OpenAI client)."""

    cube_ids: list[str] | None = Field(default=None, max_length=100,
                                       description="Cubes to read; the first is written. "
                                       "Default: the user's own chat cube")
    session: str | None = Field(default=None, max_length=256)
    remember: bool = Field(default=True, description="Store the new turns as memories")


class ChatCompletionRequest(_OpenAIBody):
    model: str = Field(max_length=256)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_CHAT_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_CHAT_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    n: int | None = Field(default=None, ge=1, le=1, description="Only 1 is supported")
    user: str | None = Field(default=None, max_length=128,
                             description="Whose memory (open mode; a key names its user)")
    memosys: MemoryOptions | None = None
    stop: str | list[str] | None = Field(default=None, description="Not supported")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Not supported")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
    memosys: dict[str, Any] = Field(description="Which memories were used, in which form "
                                    "and why; what was written")


def _usage(result: ChatResult) -> ChatUsage:
    prompt = result.usage.prompt_tokens or 0
    completion = result.usage.completion_tokens or 0
    return ChatUsage(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion)


def _memory_info(result: ChatResult) -> dict[str, Any]:
    info = result.as_dict()
    return {k: info[k] for k in ("cube_id", "cube_ids", "scheduling_id", "decisions",
                                 "written", "job_id", "activation", "events")}


def chat_cube(user: str) -> str:
    """The cube a user's OpenAI-style chats live in when the request names none."""
    slug = re.sub(r"[^A-Za-z0-9_.\-]", "-", user).strip("-.") or "user"
    return f"chat-{slug}"[:128]


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "The completion, or with stream=true a "
                              "stream of chat.completion.chunk events"}})
def chat_completions(body: ChatCompletionRequest, request: Request,
                     mos: Runtime) -> ChatCompletion | StreamingResponse:
    """Chat with memory: the memories relevant to the last user message are read into the
    prompt, the model answers, and the new turns are written back as memories."""
    model = chat_model_name(request)
    if body.model != model:
        raise NotFoundError(f"no chat model {body.model!r}; this server serves {model!r}")
    for name in ("stop", "tools"):
        if getattr(body, name):  # refused, never silently ignored: the answer would differ
            raise ValidationError(f"{name!r} is not supported by this server")
    user = caller_user(request) or body.user
    options = body.memosys or MemoryOptions()
    cube_ids = options.cube_ids
    if cube_ids is None:
        cube_ids = [mos.ensure_cube(chat_cube(user), owner=user).name] if user else None
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
                 **({"name": m.name} if m.name else {})} for m in body.messages]
    kwargs: dict[str, Any] = {
        "cube_ids": cube_ids, "user": user, "session": options.session,
        "remember": options.remember,
        "temperature": body.temperature if body.temperature is not None else 0.0,
    }
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    created = int(time.time())
    if not body.stream:
        result = mos.chat(messages, **kwargs)
        return ChatCompletion(
            id=f"chatcmpl-{result.scheduling_id}", created=created, model=model,
            choices=[Choice(message=AssistantMessage(content=result.text),
                            finish_reason=result.finish_reason)],
            usage=_usage(result), memosys=_memory_info(result))
    stream = mos.chat(messages, stream=True, **kwargs)
    first = next(stream, None)  # errors before the first token are plain JSON errors
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _chunks(stream, first, model, created, include_usage),
        media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _chunks(stream: ChatStream, first: str | None, model: str, created: int,
            include_usage: bool) -> Iterator[str]:
    chunk_id = f"chatcmpl-{new_id()}"

    def chunk(delta: dict[str, str], finish: str | None = None,
              **extra: Any) -> str:
        return sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [{"index": 0, "delta": delta,
                                                 "finish_reason": finish}], **extra})

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        if first is not None:
            yield chunk({"content": first})
            for piece in stream:
                yield chunk({"content": piece})
        result = stream.result
        finished = True
        yield chunk({}, result.finish_reason, memosys=_memory_info(result))
        if include_usage:
            yield sse({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                       "model": model, "choices": [], "usage": _usage(result).model_dump()})
    except MemosysError as exc:  # headers are sent: report in the stream, OpenAI-style
        finished = True
        yield sse({"error": {"code": exc.code, "message": str(exc)}})
    finally:
        if not finished:
            stream.close()  # the client went away: nothing is written back
    yield "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
