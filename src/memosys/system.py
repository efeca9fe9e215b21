"""MemOS: the runtime and its Memory API — the one place every interface goes through.

All higher-level writes (update, delete, rollback, cube rollback) are built on the vault's
single atomic `commit` with optimistic version checks and retried on a lost race, so
concurrent writers never lose an update or resurrect an overwritten one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from memosys.arg_checks import dict_arg, int_arg, seq_arg, text_arg
from memosys.config import Settings
from memosys.errors import (
    ConflictError,
    EmbedderMismatchError,
    NotFoundError,
    ValidationError,
)
from memosys.infra.vault import open_vault
from memosys.infra.vault.base import ItemFilter, Job, Vault, VersionRecord, Write
from memosys.models.embed import Embedder, MemoizedEmbedder, make_embedder
from memosys.operation.retrieval import HybridRetriever, RetrievalConfig, SearchHit
from memosys.system_features import FeaturesAPI
from memosys.system_governance import GovernanceAPI
from memosys.system_versions import RETRIES, UPDATABLE, CubeVersionsAPI, backoff, restorable
from memosys.types import (
    CubeConfig,
    MemCube,
    MemoryItem,
    MemoryKind,
    MemoryState,
    MemoryType,
    Source,
    Visibility,
    as_utc,
    validated,
)

if TYPE_CHECKING:
    from memosys.interface.reader import MemReader

MAX_TOP_K = 1000
_EMBED_BATCH = 64

Progress = Callable[[int, int], None]
"""Called with (done, total) during long work."""


class Message(BaseModel):
    """One chat message as a user sends it; stored verbatim as an episode memory."""

    model_config = ConfigDict(extra="forbid")

    role: str = "user"
    content: str
    name: str | None = None
    """Speaker's name, e.g. "Caroline"; included in the stored text for retrieval."""
    id: str | None = None
    timestamp: datetime | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message content must not be empty")
        return value


@dataclass(frozen=True)
class SearchFilters:
    """Search/list filters as users give them (all optional)."""

    memory_types: Sequence[str] = ()
    states: Sequence[str] = ("active",)
    kinds: Sequence[str] = ("plaintext",)
    """Activation-cache and adapter records are internal: asked for only by name."""
    user: str | None = None
    agent: str | None = None
    session: str | None = None
    tags: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    valid_at: datetime | None = None




class MemOS(GovernanceAPI, FeaturesAPI, CubeVersionsAPI):
    """The memory runtime: mounts cubes in one vault and serves the Memory API.

    Every method checks and audits the current actor (`actor`, `as_actor`; see
    `memosys.access`): a plain MemOS is the local installation admin."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        vault: Vault | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings or Settings.load()
        self.vault = vault or open_vault(self.settings)
        self.embedder = MemoizedEmbedder(embedder or make_embedder(
            self.settings.embedder,
            base_url=self.settings.openai_base_url,
            api_key=self.settings.openai_api_key,
        ))
        self.retriever = HybridRetriever(
            self.vault,
            self.embedder,
            config=RetrievalConfig.baseline()
            if self.settings.retrieval == "hybrid"
            else RetrievalConfig(),
        )
        self._setup_graph()

    @classmethod
    def open(cls, home: str | Path | None = None, **overrides: Any) -> MemOS:
        return cls(Settings.load(home, **overrides))

    def close(self) -> None:
        if self._is_view:  # a view (as_actor) shares the runtime's vault and scheduler
            return
        if getattr(self, "_scheduler", None) is not None:
            self._scheduler.stop()  # its worker uses the vault
        self.events.stop_dispatcher()  # so does webhook delivery
        self.vault.close()

    def __enter__(self) -> MemOS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- cubes -----------------------------------------------------------------------
    def create_cube(
        self, name: str, *, owner: str | None = None, description: str = ""
    ) -> MemCube:
        owner = self._access.check_create_cube(owner)
        config = CubeConfig(embedder_id=self.embedder.id, embedding_dim=self.embedder.dim)
        cube = validated(MemCube, name=name, owner=owner, description=description,
                         config=config)
        created = self.vault.create_cube(cube)
        self._audit("create_cube", cube_id=created.id, detail={"owner": owner})
        return created

    def get_cube(self, cube: str, *, need: str = "read") -> MemCube:
        """A cube by name or id the actor may `need` (read/write/delete/share), checked
        against this runtime's embedder."""
        found = self.vault.get_cube(text_arg("cube", cube))
        self._access.require_cube(found, need, op=f"cube.{need}", name=cube)
        return self._embedder_checked(found)

    def _embedder_checked(self, found: MemCube) -> MemCube:
        cfg = found.config
        if cfg.embedder_id != self.embedder.id or cfg.embedding_dim != self.embedder.dim:
            raise EmbedderMismatchError(
                f"cube {found.name!r} was embedded with {cfg.embedder_id} "
                f"(dim {cfg.embedding_dim}) but this runtime uses {self.embedder.id} "
                f"(dim {self.embedder.dim}); use that embedder, or re-embed the cube "
                f"(`memosys reembed {found.name}`)"
            )
        return found

    def ensure_cube(self, name: str, *, owner: str | None = None) -> MemCube:
        try:
            return self.get_cube(name)
        except NotFoundError:
            try:
                return self.create_cube(name, owner=owner)
            except ConflictError:  # created meanwhile by another writer
                return self.get_cube(name)

    def list_cubes(self) -> list[MemCube]:
        return self._access.split_cubes(self.vault.list_cubes())[0]

    def reembed(self, cube: str, progress: Progress | None = None) -> int:
        """Recompute every embedding of a cube with this runtime's embedder."""
        found = self.vault.get_cube(text_arg("cube", cube))
        self._access.require_cube(found, "write", op="reembed", name=cube)
        items = self._all_items(found.id)
        vectors: dict[str, Any] = {}
        for start in range(0, len(items), _EMBED_BATCH):
            batch = items[start : start + _EMBED_BATCH]
            for item, vec in zip(batch, self.embedder.embed([i.text for i in batch]),
                                 strict=True):
                vectors[item.id] = vec
            if progress:
                progress(len(vectors), len(items))
        config = found.config.model_copy(
            update={"embedder_id": self.embedder.id, "embedding_dim": self.embedder.dim}
        )
        self.vault.replace_vectors(found.id, vectors, config)
        self._audit("reembed", cube_id=found.id, detail={"count": len(vectors)})
        return len(vectors)

    def _all_items(self, cube_id: str) -> list[MemoryItem]:
        flt = ItemFilter(cube_ids=(cube_id,), states=())
        out: list[MemoryItem] = []
        while batch := self.vault.list_items(flt, limit=1000, offset=len(out)):
            out.extend(batch)
        return out

    # --- adding ----------------------------------------------------------------------
    def add(
        self,
        cube: str,
        text: str | None = None,
        *,
        messages: Sequence[Message | dict[str, Any]] | None = None,
        memory_type: str | MemoryType | None = None,
        tags: Sequence[str] = (),
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        document_uri: str | None = None,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
        owner: str | None = None,
        visibility: str | Visibility = Visibility.CUBE,
        metadata: dict[str, Any] | None = None,
        progress: Progress | None = None,
        infer: bool = False,
        wait: bool = True,
    ) -> list[MemoryItem]:
        """Store a text, or chat messages (each kept verbatim as an episode memory).

        Acknowledged only once durable; a bad field fails the whole call before anything
        is written. `infer=True`: then extract and reconcile memories with the MemReader
        (a text without a type is stored as an episode first); with `wait=False` that
        becomes a durable job instead (returned list's `.job`). See docs/reader.md."""
        if (text is None) == (messages is None):
            raise ValidationError("give exactly one of text or messages")
        found = self.get_cube(cube, need="write")
        common: dict[str, Any] = {
            "cube_id": found.id,
            "tags": list(seq_arg("tags", tags)),
            "owner": self._access.owner_for_new(owner) if owner or not user
            else (user if self._access.unrestricted else self._actor.user_id),
            "visibility": visibility,
            "metadata": dict(metadata or {}),
            "valid_to": valid_to,
        }
        items: list[MemoryItem] = []
        if text is not None:
            items.append(validated(
                MemoryItem,
                **common,
                text=text_arg("text", text, allow_empty=True),
                memory_type=memory_type or (MemoryType.EPISODE if infer else MemoryType.FACT),
                valid_from=valid_from,
                source=Source(user=user, agent=agent, session=session,
                              document_uri=document_uri),
            ))
        else:
            for raw in seq_arg("messages", messages or ()):
                msg = raw if isinstance(raw, Message) else validated(Message, **dict_arg(raw))
                speaker = msg.name or None
                items.append(validated(
                    MemoryItem,
                    **{**common, "metadata": {**common["metadata"],
                                              **({"speaker": speaker} if speaker else {})}},
                    text=f"{speaker}: {msg.content}" if speaker else msg.content,
                    memory_type=memory_type or MemoryType.EPISODE,
                    valid_from=msg.timestamp or valid_from,
                    source=Source(user=user, agent=agent, session=session, role=msg.role,
                                  message_ids=[msg.id] if msg.id else [],
                                  document_uri=document_uri),
                ))
        stored = self._insert(found.id, items, progress)
        if infer:
            return self.reader.after_add(found.id, stored, wait=wait)
        return stored

    @property
    def reader(self) -> MemReader:
        """The MemReader (extraction, reconciliation, intents, jobs), created on first use."""
        if getattr(self, "_reader", None) is None:
            from memosys.interface.reader import MemReader

            self._reader = MemReader(self)
        return self._reader  # type: ignore[return-value]

    @reader.setter
    def reader(self, value: MemReader) -> None:
        self._reader = value

    def job(self, job_id: str) -> Job:
        """A background job (e.g. an extraction queued by `add(infer=True, wait=False)`)."""
        found = self.vault.get_job(text_arg("job id", job_id))
        if found.cube_id is not None and not self._access.unrestricted:
            try:
                self.get_cube(found.cube_id)
            except NotFoundError:
                raise NotFoundError(f"no job {job_id!r}") from None
        elif not self._access.unrestricted:
            raise NotFoundError(f"no job {job_id!r}")
        return found

    def add_items(
        self, cube: str, items: Iterable[MemoryItem], progress: Progress | None = None
    ) -> list[MemoryItem]:
        """Store fully formed items (import, benchmarks, derived memories). An actor
        other than an admin owns every item it adds."""
        found = self.get_cube(cube, need="write")
        access = self._access
        batch = [i.model_copy(update={"cube_id": found.id} if access.unrestricted else
                              {"cube_id": found.id, "owner": self._actor.user_id})
                 for i in items]
        return self._insert(found.id, batch, progress)

    def _insert(
        self, cube_id: str, items: list[MemoryItem], progress: Progress | None
    ) -> list[MemoryItem]:
        stored: list[MemoryItem] = []
        items = self._access.label(cube_id, items)
        for start in range(0, len(items), _EMBED_BATCH):
            batch = items[start : start + _EMBED_BATCH]
            vectors = self.embedder.embed([i.text for i in batch])
            writes = [Write(i, "add", None, v) for i, v in zip(batch, vectors, strict=True)]
            done = self.vault.commit(cube_id, writes)
            self._audit("add", cube_id=cube_id, items=done)
            stored.extend(done)
            if progress:
                progress(len(stored), len(items))
        return stored

    # --- reading ---------------------------------------------------------------------
    def get(self, item_id: str) -> MemoryItem:
        found = self._access.visible_item(text_arg("id", item_id), "get")
        self._audit("get", items=[found])
        return self._access.present([found])[0]

    def history(self, item_id: str) -> list[VersionRecord]:
        current = self._access.visible_item(text_arg("id", item_id), "history")
        records = self.vault.history(current.id)
        if not records:
            raise NotFoundError(f"no memory {item_id!r}")
        self._audit("history", items=[current], detail={"versions": len(records)})
        shown = self._access.present([r.item for r in records])
        return [VersionRecord(i, r.clock, r.op, r.at) for i, r in zip(shown, records,
                                                                       strict=True)]

    def list(
        self,
        cube: str,
        filters: SearchFilters | dict[str, Any] | None = None,
        *,
        limit: int = 100,
        offset: int = 0,
    ) -> list[MemoryItem]:
        found = self.vault.get_cube(text_arg("cube", cube))
        self._access.require_cube(found, "read", op="list", name=cube)
        flt = self._access.restrict(self._filter([found.id], filters))
        items = self.vault.list_items(flt, int_arg("limit", limit, 1, 10_000),
                                      int_arg("offset", offset, 0, None))
        self._audit("list", cube_id=found.id, items=items)
        return self._access.present(items)

    def search(
        self,
        query: str,
        cube_ids: Sequence[str] | str | None = None,
        top_k: int = 10,
        filters: SearchFilters | dict[str, Any] | None = None,
        *,
        record_access: bool = True,
    ) -> list[SearchHit]:
        """Hybrid search over one or several cubes (all cubes when none are named)."""
        query = text_arg("query", query)
        top_k = int_arg("top_k", top_k, 1, MAX_TOP_K)
        if isinstance(cube_ids, str):
            cube_ids = [cube_ids]
        others: list[MemCube] = []
        if cube_ids:
            cubes = [self.get_cube(c).id for c in seq_arg("cube_ids", cube_ids)]
        else:  # every cube the actor can read, plus the public memories of the others
            readable, others = self._access.split_cubes(self.vault.list_cubes())
            cubes = [self._embedder_checked(c).id for c in [*readable, *others]]
        if not cubes:
            return []
        flt = self._access.restrict(self._filter(cubes, filters), others)
        hits = self.retriever.search(query, flt, top_k)
        if record_access and hits:
            self.vault.record_access([h.item.id for h in hits])
        self._audit("search", items=[h.item for h in hits],
                    detail={"cubes": len(cubes), "top_k": top_k})
        shown = self._access.present([h.item for h in hits])
        return [h if h.item is i else dataclasses.replace(h, item=i)
                for h, i in zip(hits, shown, strict=True)]

    @staticmethod
    def _filter(
        cube_ids: list[str], filters: SearchFilters | dict[str, Any] | None
    ) -> ItemFilter:
        if filters is None:
            filters = SearchFilters()
        elif isinstance(filters, dict):
            try:
                filters = SearchFilters(**filters)
            except TypeError as exc:
                raise ValidationError(f"bad filters: {exc}") from None
        try:
            types = tuple(MemoryType(t) for t in seq_arg("memory_types", filters.memory_types))
            states = tuple(MemoryState(s) for s in seq_arg("states", filters.states))
            kinds = tuple(MemoryKind(k) for k in seq_arg("kinds", filters.kinds))
        except ValueError as exc:
            raise ValidationError(
                f"{exc}; memory types: {[t.value for t in MemoryType]}, "
                f"states: {[s.value for s in MemoryState]}, kinds: {[k.value for k in MemoryKind]}"
            ) from None
        for name in ("since", "until", "valid_at"):
            value = getattr(filters, name)
            if value is not None and not isinstance(value, datetime):
                raise ValidationError(f"{name} must be a datetime, got {type(value).__name__}")
        return ItemFilter(
            cube_ids=tuple(cube_ids),
            memory_types=types,
            kinds=kinds,
            states=states,
            user=filters.user,
            agent=filters.agent,
            session=filters.session,
            tags=tuple(seq_arg("tags", filters.tags)),
            since=as_utc(filters.since),
            until=as_utc(filters.until),
            valid_at=as_utc(filters.valid_at),
        )

    # --- changing --------------------------------------------------------------------
    def update(
        self, item_id: str, *, expected_version: int | None = None, **changes: Any
    ) -> MemoryItem:
        """Write a new version with `changes` (text, tags, memory_type, valid_from, ...).

        With `expected_version`, fail with ConflictError if someone else wrote first;
        without, apply the change on top of whatever is current."""
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValidationError(
                f"cannot update {sorted(unknown)}; updatable: {sorted(UPDATABLE)}"
            )
        if not changes:
            raise ValidationError("nothing to update")
        if "owner" in changes or "visibility" in changes:
            need = "share"
        elif changes.get("state") == MemoryState.DELETED:
            need = "delete"
        else:
            need = "write"
        return self._rewrite(item_id, "update", lambda _cur: changes, expected_version,
                             need=need)

    def delete(self, item_id: str) -> MemoryItem:
        """Soft delete: a new version in state `deleted`, restorable by rollback."""
        return self._rewrite(item_id, "delete", lambda _cur: {"state": MemoryState.DELETED},
                             need="delete")

    def rollback(self, item_id: str, version: int) -> MemoryItem:
        """Make an old version current again, as a new version (history keeps both)."""
        version = int_arg("version", version, 1, None)
        current = self._access.visible_item(text_arg("id", item_id), "rollback")
        self._access.require_item(current, "write", "rollback")
        records = {r.item.version: r.item for r in self.vault.history(current.id)}
        if version not in records:
            raise NotFoundError(f"memory {item_id} has no version {version}")
        return self._rewrite(item_id, "rollback", lambda _cur: restorable(records[version]))

    def purge(self, item_ids: Sequence[str] | str) -> int:
        """Erase for good (e.g. an erasure request): no version, index entry or vector is
        left. Cannot be undone."""
        ids = [item_ids] if isinstance(item_ids, str) else list(seq_arg("ids", item_ids))
        ids = list(dict.fromkeys(text_arg("id", i) for i in ids))
        found = [self._access.visible_item(i, "purge") for i in ids]
        for item in found:
            self._access.require_item(item, "delete", "purge")
        versions = {i.id: len(self.vault.history(i.id)) for i in found}
        erased = self.vault.purge(ids)
        self.vault.governance.forget_items(ids)
        # Proof of deletion: who erased which ids at which version, and nothing else.
        for item in found:
            self._audit("purge", cube_id=item.cube_id, items=[(item.id, item.version)],
                        detail={"versions_erased": versions[item.id]})
        return erased

    def feedback(
        self,
        item_id: str,
        kind: float | str,
        note: str | None = None,
        *,
        correction: str | None = None,
    ) -> MemoryItem | None:
        """Feedback on a memory: a number (added to its feedback score, as before), or
        `useful`, `wrong`, `outdated` with an optional note; `correction` (with wrong or
        outdated) writes the corrected text as a new version. See operation/lifecycle."""
        return self.lifecycle.feedback(item_id, kind, note, correction=correction)

    def _rewrite(
        self,
        item_id: str,
        op: str,
        change: Callable[[MemoryItem], dict[str, Any]],
        expected_version: int | None = None,
        *,
        need: str = "write",
    ) -> MemoryItem:
        embedded: dict[str, np.ndarray] = {}  # a lost race retries without re-embedding
        item_id = text_arg("id", item_id)
        for attempt in range(RETRIES):
            current = self._access.visible_item(item_id, op)
            self._access.require_item(current, need, op)
            self._embedder_checked(self.vault.get_cube(current.cube_id))
            if expected_version is not None and current.version != expected_version:
                raise ConflictError(
                    f"memory {item_id} is at version {current.version}, "
                    f"expected {expected_version}"
                )
            write = self._next_version(current, change(current), op, embedded)
            try:
                [stored] = self.vault.commit(current.cube_id, [write])
            except ConflictError:
                if expected_version is not None:
                    raise
                backoff(attempt)
                continue
            self._audit(op, items=[stored])
            return self._access.present([stored])[0]
        raise ConflictError(f"memory {item_id} kept changing; gave up after {RETRIES} tries")

    def _next_version(
        self,
        current: MemoryItem,
        changes: dict[str, Any],
        op: str,
        embedded: dict[str, np.ndarray] | None = None,
    ) -> Write:
        fields = current.model_dump(exclude={"stats", "version", "updated_at"})
        fields.update(changes)
        item = validated(MemoryItem, **fields)
        # Detected labels always come back: a writer cannot unmask text by dropping them.
        [item] = self._access.label(current.cube_id, [item],
                                    rules=item.text != current.text)
        vector = None
        if item.text != current.text:
            embedded = {} if embedded is None else embedded
            if item.text not in embedded:
                embedded[item.text] = self.embedder.embed([item.text])[0]
            vector = embedded[item.text]
        return Write(item, op, current.version, vector)


__all__ = ["MemOS", "Message", "SearchFilters", "SearchHit"]
