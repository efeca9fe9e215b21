"""OpenAI-compatible endpoints under `/v1`: any OpenAI client pointed at memosys
(`base_url="http://host:port/v1"`) gets the runtime's models.

- `GET /v1/models`, `GET /v1/models/{model}`: the chat model (ServerConfig.model_name) and
  the embedder (its id, e.g. `minilm-l6-v2`).
- `POST /v1/embeddings`: the runtime's embedder; `encoding_format` float or base64 (the
  official Python client asks for base64 by default). `usage` counts whitespace-separated
  words, an approximation of tokens.

Request models ignore unknown fields (OpenAI clients send many optional parameters), unlike
the `/api/v1` models, which reject them.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from memosys.errors import NotFoundError, ValidationError
from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS
from memosys.types import MAX_TEXT_CHARS

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]
MAX_EMBED_INPUTS = 2048
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
