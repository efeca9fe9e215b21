"""Activation memory: plaintext memories compiled into a KV cache of the bound local model.

A cache is the model's key/value tensors for a *token prefix* of the prompt (the system
prompt plus the stable memory sections, see :mod:`memosys.operation.prompt`). Generating on
top of it skips re-reading that text and gives the same greedy output as the text in the
prompt, because it *is* the prompt's prefix, computed by the same model at the same positions.

Where things live
- **Tensors**: ``<home>/activation/<cube id>/<record id>.safetensors``: float32 ``k.<layer>``
  and ``v.<layer>`` (shape ``1 x kv_heads x tokens x head_dim``), the prefix ``input_ids``,
  and the header as JSON in the safetensors metadata (key ``memosys``).
- **Record**: a :class:`~memosys.types.MemoryItem` of kind ``activation`` in the cube, tagged
  ``activation-cache``, ``derived_from`` = the source memory ids, ``metadata["activation"]`` =
  the header. The record is what export, audit and delete propagation see; its usage
  statistics (``heat``) drive eviction. Its id is derived from (cube, cache key), so two
  workers building the same cache converge on one record.
- **Header**: format, cache key, model fingerprint (sha256 of the GGUF), tokenizer id (sha256
  of tokenizer.json), token count, sources (id + version), hierarchical prefix hashes,
  build time and seconds, bytes, tokens reused from another cache.

Safety: :meth:`ActivationStore.load` refuses a cache of another model or tokenizer
(:class:`~memosys.errors.ActivationModelMismatchError`) and one whose sources were edited,
deleted or purged (:class:`~memosys.errors.StaleActivationError`), also when it is already
in memory; :meth:`ActivationStore.sweep` deletes such caches' files so a forgotten memory
does not live on as tensors.

Composition: caches are never concatenated. A new prefix reuses the longest *level* prefix
(system -> persona -> rules -> background) of an existing cache with the same tokens at the
same positions, crops it there and prefills only the rest (docs/activation.md has numbers).

Budget: ``budget_mb`` bounds the bytes on disk (all cubes); over it, the coldest caches
(decayed heat of their records) lose their file and are rebuilt when next needed.
``memory_mb`` bounds the caches kept loaded in RAM (least recently used go first).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memosys.errors import (
    ActivationError,
    ActivationModelMismatchError,
    ConflictError,
    NotFoundError,
    StaleActivationError,
)
from memosys.infra.vault.base import ItemFilter
from memosys.types import MemoryItem, MemoryKind, MemoryState, MemoryType

if TYPE_CHECKING:
    from transformers import DynamicCache

    from memosys.models.llm import ChatResult
    from memosys.models.local_llm import LocalLLM
    from memosys.system import MemOS

__all__ = [
    "ACTIVATION_TAG",
    "ActivationStore",
    "CacheHeader",
    "LoadedActivation",
    "SourceRef",
]

FORMAT = 1
ACTIVATION_TAG = "activation-cache"
_META_KEY = "memosys"
_NAMESPACE = uuid.UUID("6f2b8f4e-6a43-4a52-9a56-0c8e2d6b7a11")
HEAT_HALF_LIFE_S = 3600.0


@dataclass(frozen=True)
class SourceRef:
    id: str
    version: int


@dataclass(frozen=True)
class CacheHeader:
    key: str
    model_fingerprint: str
    tokenizer_id: str
    model_id: str
    token_count: int
    sources: tuple[SourceRef, ...]
    levels: tuple[tuple[int, str], ...]
    """(token count, sha256 of the token ids up to there) at each level boundary."""
    built_at: str
    build_s: float
    reused_tokens: int
    bytes: int = 0
    format: int = FORMAT

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sources"] = [asdict(s) for s in self.sources]
        out["levels"] = [list(level) for level in self.levels]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CacheHeader:
        try:
            return cls(
                key=str(raw["key"]),
                model_fingerprint=str(raw["model_fingerprint"]),
                tokenizer_id=str(raw["tokenizer_id"]),
                model_id=str(raw["model_id"]),
                token_count=int(raw["token_count"]),
                sources=tuple(SourceRef(str(s["id"]), int(s["version"]))
                              for s in raw["sources"]),
                levels=tuple((int(n), str(h)) for n, h in raw["levels"]),
                built_at=str(raw["built_at"]),
                build_s=float(raw["build_s"]),
                reused_tokens=int(raw["reused_tokens"]),
                bytes=int(raw.get("bytes", 0)),
                format=int(raw.get("format", FORMAT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ActivationError(f"malformed activation cache header: {exc}") from None


@dataclass
class LoadedActivation:
    """A usable cache: pass it to :meth:`ActivationStore.generate` / :meth:`stream`."""

    header: CacheHeader
    record_id: str
    cube_id: str
    token_ids: list[int]
    cache: DynamicCache = field(repr=False)
    source: str = "memory"
    """Where it came from this time: "memory", "disk" or "built"."""
    load_s: float = 0.0

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def prefix_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def cache_key(fingerprint: str, tokenizer_id: str, ids: Sequence[int],
              sources: Sequence[SourceRef]) -> str:
    """Content address of a cache: model, tokenizer, exact tokens and source versions."""
    payload = json.dumps({
        "model": fingerprint, "tokenizer": tokenizer_id, "ids": list(ids),
        "sources": sorted([s.id, s.version] for s in sources),
    })
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def decayed_heat(item: MemoryItem, now: float, half_life_s: float = HEAT_HALF_LIFE_S) -> float:
    """A record's heat, halved for every ``half_life_s`` since it was last used."""
    last = item.stats.last_accessed
    if last is None:
        return 0.0
    age = max(0.0, now - last.timestamp())
    return item.stats.heat * math.pow(0.5, age / half_life_s)


class ActivationStore:
    """KV caches of one local model, for all cubes of a runtime; thread-safe."""

    def __init__(
        self,
        mos: MemOS,
        llm: LocalLLM,
        root: str | os.PathLike[str] | None = None,
        *,
        budget_mb: float = 1024.0,
        memory_mb: float = 512.0,
    ) -> None:
        self.mos = mos
        self.llm = llm
        self.root = Path(root) if root is not None else mos.settings.home / "activation"
        self.budget_bytes = int(budget_mb * 1024 * 1024)
        self.memory_bytes = int(memory_mb * 1024 * 1024)
        self._loaded: OrderedDict[str, LoadedActivation] = OrderedDict()
        self._lock = threading.RLock()
        self._tokenizer_id: str | None = None
        self.evictions: list[str] = []
        """Record ids whose file the budget removed (newest last), for inspection."""

    # --- identity ----------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.llm.model_fingerprint

    @property
    def tokenizer_id(self) -> str:
        if self._tokenizer_id is None:
            path = self.llm.cache_dir / "tokenizer.json"
            if path.is_file():
                self._tokenizer_id = hashlib.sha256(path.read_bytes()).hexdigest()
            else:  # a tokenizer without its file: hash what defines it
                vocab = json.dumps(sorted(self.llm.tokenizer.get_vocab().items()))
                self._tokenizer_id = hashlib.sha256(vocab.encode()).hexdigest()
        return self._tokenizer_id

    def key_for(self, ids: Sequence[int], sources: Sequence[SourceRef]) -> str:
        return cache_key(self.fingerprint, self.tokenizer_id, ids, sources)

    def record_id(self, cube_id: str, key: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{cube_id}/{key}"))

    def path_for(self, cube_id: str, record_id: str) -> Path:
        return self.root / cube_id / f"{record_id}.safetensors"

    # --- lookup and loading ------------------------------------------------------------
    def get(self, cube_id: str, key: str) -> LoadedActivation | None:
        """The cache with this key, from memory or disk; None when never built or evicted.

        Raises :class:`StaleActivationError` / :class:`ActivationModelMismatchError` rather
        than return a cache that must not be used."""
        rid = self.record_id(cube_id, key)
        with self._lock:
            hit = self._loaded.get(rid)
            if hit is not None:
                self._check(hit.header)
                self._loaded.move_to_end(rid)
                hit.source, hit.load_s = "memory", 0.0
                return hit
        path = self.path_for(cube_id, rid)
        if not path.is_file():
            return None
        return self.load(path, cube_id=cube_id, record_id=rid)

    def load(self, path: Path, *, cube_id: str, record_id: str) -> LoadedActivation:
        """Read a cache file, verify it belongs to this model and its sources are current."""
        started = time.perf_counter()
        header, ids, tensors = self._read(path)
        self._check(header)
        cache = self._to_cache(tensors, len(ids))
        loaded = LoadedActivation(header, record_id, cube_id, ids, cache, "disk",
                                  time.perf_counter() - started)
        self._remember(loaded)
        return loaded

    def _read(self, path: Path) -> tuple[CacheHeader, list[int], dict[str, Any]]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types
            raise ActivationError(f"unreadable activation cache {path}: {exc}") from exc
        if _META_KEY not in meta:
            raise ActivationError(f"{path} is not a memosys activation cache (no header)")
        try:
            header = CacheHeader.from_dict(json.loads(meta[_META_KEY]))
        except ValueError as exc:
            raise ActivationError(f"malformed activation cache header in {path}: {exc}") from None
        if header.format != FORMAT:
            raise ActivationError(f"{path}: cache format {header.format}, expected {FORMAT}")
        ids = [int(t) for t in tensors.pop("input_ids").tolist()]
        if len(ids) != header.token_count:
            raise ActivationError(f"{path}: header says {header.token_count} tokens, "
                                  f"file holds {len(ids)}")
        return header, ids, tensors

    def _check(self, header: CacheHeader) -> None:
        if header.model_fingerprint != self.fingerprint:
            raise ActivationModelMismatchError(
                f"activation cache {header.key} was built by model "
                f"{header.model_fingerprint[:12]}… ({header.model_id}) but the bound model is "
                f"{self.fingerprint[:12]}… ({self.llm.id}); it cannot be used with this model "
                "(rebuild it from its source memories)"
            )
        if header.tokenizer_id != self.tokenizer_id:
            raise ActivationModelMismatchError(
                f"activation cache {header.key} was built with another tokenizer "
                f"({header.tokenizer_id[:12]}…, bound: {self.tokenizer_id[:12]}…)"
            )
        reasons = self.stale_reasons(header)
        if reasons:
            raise StaleActivationError(
                f"activation cache {header.key} is stale: {'; '.join(reasons)}"
            )

    def stale_reasons(self, header: CacheHeader) -> list[str]:
        """Why the cache no longer matches its sources (empty: it does)."""
        current = self.mos.vault.get_many([s.id for s in header.sources])
        reasons = []
        for ref in header.sources:
            item = current.get(ref.id)
            if item is None:
                reasons.append(f"source {ref.id} was purged")
            elif item.state != MemoryState.ACTIVE:
                reasons.append(f"source {ref.id} is {item.state.value}")
            elif item.version != ref.version:
                reasons.append(f"source {ref.id} changed (v{ref.version} -> v{item.version})")
        return reasons

    def _to_cache(self, tensors: dict[str, Any], n_tokens: int) -> DynamicCache:
        from transformers import DynamicCache

        config = self.llm.model.config
        layers = int(config.num_hidden_layers)
        shape = (1, int(config.num_key_value_heads), n_tokens, int(config.head_dim))
        cache = DynamicCache(config=config)
        for layer in range(layers):
            k, v = tensors.get(f"k.{layer}"), tensors.get(f"v.{layer}")
            if k is None or v is None or tuple(k.shape) != shape or tuple(v.shape) != shape:
                raise ActivationModelMismatchError(
                    f"cache tensors for layer {layer} do not fit this model (expected {shape})"
                )
            cache.update(k, v, layer)
        return cache

    def _remember(self, loaded: LoadedActivation) -> None:
        with self._lock:
            self._loaded[loaded.record_id] = loaded
            self._loaded.move_to_end(loaded.record_id)
            while len(self._loaded) > 1 and self._memory_used() > self.memory_bytes:
                self._loaded.popitem(last=False)

    def _memory_used(self) -> int:
        return sum(_cache_bytes(x.cache) for x in self._loaded.values())

    def forget_loaded(self) -> None:
        """Drop every in-memory cache (the files stay)."""
        with self._lock:
            self._loaded.clear()

    # --- building ----------------------------------------------------------------------
    def build(
        self,
        cube_id: str,
        levels: Sequence[Sequence[int]],
        sources: Sequence[SourceRef],
    ) -> LoadedActivation:
        """Compile the prefix (token ids given per level, concatenated in order) into a cache.

        Reuses the longest level prefix some existing cache of the cube shares; writes the
        file and the record; enforces the budget. Sources must be current (else stale)."""
        ids = [int(t) for level in levels for t in level]
        if not ids:
            raise ActivationError("nothing to compile: the prefix is empty")
        refs = tuple(sorted(set(sources), key=lambda s: s.id))
        key = self.key_for(ids, refs)
        bounds: list[tuple[int, str]] = []
        n = 0
        for level in levels:
            if level:
                n += len(level)
                bounds.append((n, prefix_hash(ids[:n])))
        started = time.perf_counter()
        provisional = CacheHeader(key, self.fingerprint, self.tokenizer_id, self.llm.id,
                                  len(ids), refs, tuple(bounds), "", 0.0, 0)
        reasons = self.stale_reasons(provisional)
        if reasons:
            raise StaleActivationError(f"cannot compile stale sources: {'; '.join(reasons)}")
        cache, reused = self._prefill_reusing(cube_id, ids, bounds)
        header = CacheHeader(
            key, self.fingerprint, self.tokenizer_id, self.llm.id, len(ids), refs,
            tuple(bounds), datetime.now(UTC).isoformat(timespec="seconds"),
            round(time.perf_counter() - started, 4), reused, _cache_bytes(cache),
        )
        rid = self.record_id(cube_id, key)
        path = self.path_for(cube_id, rid)
        self._write(path, header, ids, cache)
        self._write_record(cube_id, rid, header)
        loaded = LoadedActivation(header, rid, cube_id, ids, cache, "built", header.build_s)
        self._remember(loaded)
        self.enforce_budget(keep={rid})
        return loaded

    def _prefill_reusing(
        self, cube_id: str, ids: list[int], bounds: list[tuple[int, str]]
    ) -> tuple[DynamicCache, int]:
        base = self._best_base(cube_id, bounds)
        if base is None:
            return self.llm.prefill(ids), 0
        cache, n = base
        if n == len(ids):
            return cache, n
        return self._extend(cache, ids[n:]), n

    def _best_base(
        self, cube_id: str, bounds: list[tuple[int, str]]
    ) -> tuple[DynamicCache, int] | None:
        """A copy of an existing cache cropped to the longest level boundary it shares."""
        wanted = {h: n for n, h in bounds}
        best: tuple[int, str] | None = None  # (tokens shared, record id)
        for record in self.records(cube_id):
            header = _header_of(record)
            if header is None or header.model_fingerprint != self.fingerprint:
                continue
            if header.tokenizer_id != self.tokenizer_id:
                continue
            if record.id not in self._loaded and not self.path_for(cube_id, record.id).is_file():
                continue  # evicted
            for n, h in header.levels:
                if wanted.get(h) == n and (best is None or n > best[0]):
                    best = (n, record.id)
        if best is None:
            return None
        n, rid = best
        with self._lock:
            hit = self._loaded.get(rid)
            cache = copy.deepcopy(hit.cache) if hit is not None else None
        if cache is None:
            path = self.path_for(cube_id, rid)
            if not path.is_file():
                return None
            try:
                _, _, tensors = self._read(path)
                cache = self._to_cache(tensors, int(next(iter(tensors.values())).shape[2]))
            except ActivationError:
                return None
        # Tokens before a shared boundary are the same tokens at the same positions, so their
        # keys/values do not depend on the sources that changed after it.
        excess = cache.get_seq_length() - n
        if excess > 0:
            cache.crop(-excess)  # transformers 5: a negative count removes that many tokens
        return cache, n

    def _extend(self, cache: DynamicCache, more: list[int]) -> DynamicCache:
        import torch

        model = self.llm.model
        with self.llm.lock, torch.no_grad():
            model(input_ids=torch.tensor([more], dtype=torch.long), past_key_values=cache,
                  use_cache=True, logits_to_keep=1)
        return cache

    def _write(self, path: Path, header: CacheHeader, ids: list[int], cache: DynamicCache) -> None:
        import torch
        from safetensors.torch import save_file

        tensors: dict[str, Any] = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
        for i, layer in enumerate(cache.layers):
            tensors[f"k.{i}"] = layer.keys.contiguous()
            tensors[f"v.{i}"] = layer.values.contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={_META_KEY: json.dumps(header.as_dict())})
            os.replace(tmp, path)  # readers see the old file or the whole new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write_record(self, cube_id: str, rid: str, header: CacheHeader) -> None:
        kinds = sorted({s.id for s in header.sources})
        text = (f"KV cache of {len(kinds)} memories for {self.llm.id}: "
                f"{header.token_count} tokens")
        meta = {"activation": header.as_dict()}
        item = MemoryItem(
            id=rid, cube_id=cube_id, kind=MemoryKind.ACTIVATION,
            memory_type=MemoryType.DOCUMENT, text=text, tags=[ACTIVATION_TAG],
            derived_from=kinds, metadata=meta,
        )
        try:
            self.mos.add_items(cube_id, [item])
        except ConflictError:  # rebuilt after eviction, or built by another worker
            try:
                current = self.mos.get(rid)
            except NotFoundError:
                return
            if current.state != MemoryState.ACTIVE or current.metadata != meta:
                self.mos.update(rid, metadata=meta, state=MemoryState.ACTIVE)

    # --- listing, sweeping, budget -----------------------------------------------------
    def records(self, cube_id: str, *, states: Sequence[MemoryState] = (MemoryState.ACTIVE,)
                ) -> list[MemoryItem]:
        flt = ItemFilter(cube_ids=(cube_id,), tags=(ACTIVATION_TAG,), states=tuple(states))
        out: list[MemoryItem] = []
        while batch := self.mos.vault.list_items(flt, limit=500, offset=len(out)):
            out.extend(batch)
        return [r for r in out if r.kind == MemoryKind.ACTIVATION]

    def sweep(self, cube_id: str) -> list[str]:
        """Delete the caches (file, memory, record) whose sources changed or are gone, and
        those of another model; returns their record ids."""
        dropped = []
        for record in self.records(cube_id):
            header = _header_of(record)
            bad = header is None or header.model_fingerprint != self.fingerprint or bool(
                self.stale_reasons(header))
            if bad:
                self.drop(cube_id, record.id)
                dropped.append(record.id)
        return dropped

    def drop(self, cube_id: str, record_id: str) -> None:
        """Remove one cache everywhere: memory, file, and its record (soft-deleted)."""
        with self._lock:
            self._loaded.pop(record_id, None)
        self.path_for(cube_id, record_id).unlink(missing_ok=True)
        with contextlib.suppress(NotFoundError, ConflictError):  # gone or racing: fine
            self.mos.delete(record_id)

    def files(self) -> list[tuple[str, str, int]]:
        """(cube id, record id, bytes) of every cache file on disk."""
        out = []
        if self.root.is_dir():
            for path in self.root.glob("*/*.safetensors"):
                try:
                    out.append((path.parent.name, path.stem, path.stat().st_size))
                except OSError:
                    continue  # removed meanwhile
        return out

    def disk_bytes(self) -> int:
        return sum(size for _, _, size in self.files())

    def enforce_budget(self, keep: set[str] | None = None) -> list[str]:
        """Evict the coldest cache files until the disk total fits the budget."""
        keep = keep or set()
        files = self.files()
        total = sum(size for _, _, size in files)
        if total <= self.budget_bytes:
            return []
        records = self.mos.vault.get_many([rid for _, rid, _ in files])
        now = time.time()

        def heat(entry: tuple[str, str, int]) -> float:
            record = records.get(entry[1])
            return decayed_heat(record, now) if record is not None else -1.0

        evicted = []
        for cube_id, rid, size in sorted(files, key=heat):
            if total <= self.budget_bytes:
                break
            if rid in keep:
                continue
            with self._lock:
                self._loaded.pop(rid, None)
            self.path_for(cube_id, rid).unlink(missing_ok=True)
            total -= size
            evicted.append(rid)
        self.evictions.extend(evicted)
        return evicted

    def touch(self, loaded: LoadedActivation) -> None:
        """Count a use of the cache (its heat decides eviction)."""
        self.mos.vault.record_access([loaded.record_id], used_in_answer=True)

    # --- generation --------------------------------------------------------------------
    def generate(self, loaded: LoadedActivation, suffix_ids: Sequence[int],
                 **options: Any) -> ChatResult:
        return self.llm.generate_from_cache(loaded.cache, loaded.n_tokens, suffix_ids, **options)

    def stream(self, loaded: LoadedActivation, suffix_ids: Sequence[int],
               **options: Any) -> Iterator[str]:
        return self.llm.stream_from_cache(loaded.cache, loaded.n_tokens, suffix_ids, **options)


def _header_of(record: MemoryItem) -> CacheHeader | None:
    raw = record.metadata.get("activation")
    if not isinstance(raw, dict):
        return None
    try:
        return CacheHeader.from_dict(raw)
    except ActivationError:
        return None


def _cache_bytes(cache: DynamicCache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size()
               + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)
