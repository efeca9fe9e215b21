"""Chat through any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, Ollama,
llama.cpp server, memosys's own ``/v1``), with the same ``chat``/``stream`` API as the local
model. There is no KV-cache access: activation memory needs the local backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from memosys.errors import LLMError
from memosys.models.embed import _server_message
from memosys.models.llm import (
    OPENAI_PREFIX,
    ChatResult,
    Message,
    check_messages,
    check_sampling,
    check_stop,
)

if TYPE_CHECKING:
    import openai

__all__ = ["OpenAICompatibleLLM"]

# Sent when a custom endpoint is configured without a key: self-hosted servers usually ignore
# auth, but the openai client refuses to build a request with no key at all.
_NO_KEY_PLACEHOLDER = "EMPTY"


class OpenAICompatibleLLM:
    """Chat completions from an OpenAI-compatible server; every failure is an ``LLMError``."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        if not model or not model.strip():
            raise LLMError("OpenAI-compatible LLM needs a model name, e.g. 'openai:<model>'")
        if api_key is None:
            if base_url is None:
                raise LLMError(
                    f"no API key for openai:{model}; pass api_key or set MEMOSYS_LLM_API_KEY or "
                    "OPENAI_API_KEY (or point base_url at a server that needs none)"
                )
            api_key = _NO_KEY_PLACEHOLDER
        self.model = model.strip()
        self.id = f"{OPENAI_PREFIX}{self.model}"
        self.base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._max_retries = max_retries
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    def _get_client(self) -> openai.OpenAI:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import openai

                    self._client = openai.OpenAI(
                        api_key=self._api_key,
                        base_url=self.base_url,
                        timeout=self._timeout,
                        max_retries=self._max_retries,
                    )
        return self._client

    def _request(
        self,
        messages: Sequence[Message],
        max_new_tokens: int,
        temperature: float,
        stop: Sequence[str] | str | None,
        seed: int | None,
        stream: bool,
    ) -> Any:
        msgs = check_messages(messages)
        check_sampling(max_new_tokens, temperature)
        stops = check_stop(stop)
        params: dict[str, Any] = {
            "model": self.model,
            "messages": msgs,
            # max_tokens, not max_completion_tokens: every compatible server knows it, and
            # OpenAI still accepts it for its chat models.
            "max_tokens": max_new_tokens,
            "temperature": float(temperature),
            "stream": stream,
        }
        if stops:
            params["stop"] = stops
        if seed is not None:
            params["seed"] = seed
        with self._errors():
            return self._get_client().chat.completions.create(**params)

    def _errors(self) -> _ErrorMapper:
        return _ErrorMapper(self.base_url or "the OpenAI API", self.model)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> ChatResult:
        resp = self._request(messages, max_new_tokens, temperature, stop, seed, stream=False)
        choices = list(getattr(resp, "choices", None) or [])
        if not choices:
            raise LLMError(f"chat endpoint {self.base_url or 'OpenAI'} returned no choices")
        choice = choices[0]
        usage = getattr(resp, "usage", None)
        return ChatResult(
            text=getattr(getattr(choice, "message", None), "content", None) or "",
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            finish_reason=getattr(choice, "finish_reason", None) or "stop",
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        # The request is sent here, so a bad argument or a refused request fails at the call,
        # not at the first next().
        chunks = self._request(messages, max_new_tokens, temperature, stop, seed, stream=True)
        return self._deltas(chunks)

    def _deltas(self, chunks: Any) -> Iterator[str]:
        # Closing the stream (also when the caller stops early) releases the connection.
        with chunks, self._errors():
            for chunk in chunks:
                for choice in getattr(chunk, "choices", None) or []:
                    if getattr(choice, "index", 0) != 0:
                        continue
                    content = getattr(getattr(choice, "delta", None), "content", None)
                    if content:
                        yield content

    def __repr__(self) -> str:
        return f"OpenAICompatibleLLM(model={self.model!r}, base_url={self.base_url!r})"


class _ErrorMapper:
    """Turn the client's exceptions into ``LLMError`` carrying the server's own message."""

    def __init__(self, where: str, model: str) -> None:
        self.where = where
        self.model = model

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any):
        import openai

        if exc is None or not isinstance(exc, openai.OpenAIError):
            return False
        if isinstance(exc, openai.APIStatusError):
            raise LLMError(
                f"chat endpoint {self.where} returned HTTP {exc.status_code} for model "
                f"{self.model!r}: {_server_message(exc)}"
            ) from exc
        if isinstance(exc, openai.APIConnectionError):
            raise LLMError(f"could not reach chat endpoint {self.where}: {exc}") from exc
        raise LLMError(f"chat request to {self.where} failed: {exc}") from exc
