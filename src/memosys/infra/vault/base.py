"""The storage interface (MemVault). SQLite is the embedded default; PostgreSQL implements
the same contract. Backends store and index; the runtime (`memosys.system`) decides.

One write primitive, `commit`, applies a batch of item writes atomically with optimistic
version checks, so every higher-level operation (update, delete, rollback, cube rollback)
is expressed once in the runtime and stays correct under concurrent writers.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from memosys.types import (
    CubeConfig,
    MemCube,
    MemoryItem,
    MemoryKind,
    MemoryState,
    MemoryType,
    Stats,
)

if TYPE_CHECKING:
    from memosys.infra.governance import GovernanceStore
    from memosys.infra.vault.events_sql import SQLEventStore


@dataclass(frozen=True)
class ItemFilter:
    """What a listing or search may return. Empty fields do not filter."""

    cube_ids: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    memory_types: tuple[MemoryType, ...] = ()
    kinds: tuple[MemoryKind, ...] = ()
    """plaintext | activation | parametric; the runtime's searches ask for plaintext only, so
    cache and adapter records never come back as answers."""
    states: tuple[MemoryState, ...] = (MemoryState.ACTIVE,)
    user: str | None = None
    agent: str | None = None
    session: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    """An item must carry every listed tag."""
    since: datetime | None = None
    until: datetime | None = None
    """Event time (valid_from, else created_at) within [since, until]."""
    valid_at: datetime | None = None
    """Only memories whose validity interval contains this instant."""
    viewer: str | None = None
    """Governance: leave out `private` memories not owned by this user (None: no check)."""
    public_only_cubes: tuple[str, ...] = ()
    """Governance: cubes (among `cube_ids`) from which only `public` memories may come."""


@dataclass
class Write:
    """One item's next state. `expected_version` None means create."""

    item: MemoryItem
    op: str
    expected_version: int | None = None
    vector: np.ndarray | None = None
    """New embedding; None keeps the stored one (metadata-only change)."""


@dataclass(frozen=True)
class VersionRecord:
    item: MemoryItem
    clock: int
    op: str
    at: datetime


@dataclass(frozen=True)
class Snapshot:
    cube_id: str
    clock: int
    at: datetime
    label: str = ""
    id: int | None = None


@dataclass(frozen=True)
class Change:
    """An item that changed after a clock value: its state now and as of then."""

    item_id: str
    current: MemoryItem
    then: MemoryItem | None


@dataclass(frozen=True)
class Job:
    """Background work (e.g. extraction), persisted so a crash loses nothing: a claimed
    job whose lease runs out is claimed again."""

    id: str
    kind: str
    cube_id: str | None
    payload: dict[str, Any]
    state: str
    """queued | running | done | failed"""
    attempts: int
    created_at: datetime
    updated_at: datetime
    result: dict[str, Any] | None = None
    error: str | None = None


JOB_STATES = ("queued", "running", "done", "failed")


@dataclass(frozen=True)
class ImportedItem:
    """One item's version records for `Vault.import_versions` (cube import, MemStore pull).

    `versions` are consecutive, oldest first, all of one item id: starting at version 1 for
    an item the cube does not hold yet (`expected_version` None), else at
    `expected_version + 1`. Their clocks are the source cube's. `vector` embeds the last
    version's text (required for a new item; None keeps an existing item's). `stats` are
    set on a new item; an existing item keeps its own."""

    versions: Sequence[VersionRecord]
    vector: np.ndarray | None = None
    stats: Stats | None = None
    expected_version: int | None = None


class Vault(ABC):
    """Storage backend contract. All methods are safe to call from several threads."""

    # --- cubes -----------------------------------------------------------------------
    @abstractmethod
    def create_cube(self, cube: MemCube) -> MemCube:
        """ConflictError if a cube with that name exists."""

    @abstractmethod
    def get_cube(self, id_or_name: str) -> MemCube:
        """NotFoundError if absent."""

    @abstractmethod
    def list_cubes(self) -> list[MemCube]: ...

    @abstractmethod
    def replace_vectors(
        self, cube_id: str, vectors: dict[str, np.ndarray], config: CubeConfig
    ) -> None:
        """Swap a cube's embeddings and embedder config in one transaction (re-embed)."""

    # --- items -----------------------------------------------------------------------
    @abstractmethod
    def commit(self, cube_id: str, writes: Sequence[Write]) -> list[MemoryItem]:
        """Apply writes atomically: check versions (ConflictError on a mismatch or a
        duplicate create), advance the cube clock once, store each item as the next
        version, keep the full version history, update text and vector indexes.
        Returns the stored items with their new versions."""

    @abstractmethod
    def get_many(self, ids: Sequence[str]) -> dict[str, MemoryItem]:
        """Items that exist (any state); unknown ids are left out."""

    @abstractmethod
    def history(self, item_id: str) -> list[VersionRecord]:
        """Every stored version, oldest first; empty if the id is unknown."""

    @abstractmethod
    def changes_since(self, cube_id: str, clock: int) -> list[Change]:
        """Items written after `clock`, with their state as of `clock` (None: not yet
        created then)."""

    @abstractmethod
    def purge(self, ids: Sequence[str]) -> int:
        """Erase items, every version, vector and index entry, so the text is gone from
        the storage files. Returns how many were erased."""

    @abstractmethod
    def list_items(
        self, flt: ItemFilter, limit: int = 100, offset: int = 0
    ) -> list[MemoryItem]:
        """Newest first (by created_at)."""

    @abstractmethod
    def count(self, flt: ItemFilter) -> int: ...

    @abstractmethod
    def search_text(self, query: str, flt: ItemFilter, limit: int) -> list[tuple[str, float]]:
        """BM25 full-text search, best first; higher score is better."""

    @abstractmethod
    def search_vector(
        self, vector: np.ndarray, flt: ItemFilter, limit: int
    ) -> list[tuple[str, float]]:
        """Cosine search over stored embeddings, best first."""

    @abstractmethod
    def record_access(self, ids: Sequence[str], *, used_in_answer: bool = False) -> None:
        """Bump usage statistics without writing a new version."""

    @abstractmethod
    def add_feedback(self, item_id: str, delta: float) -> None: ...

    @abstractmethod
    def import_versions(
        self,
        cube_id: str,
        batch: Sequence[ImportedItem],
        *,
        wipe: bool = False,
        new_cube: MemCube | None = None,
    ) -> int:
        """Load whole version histories verbatim (documents, versions, operations, times)
        in one transaction; all or nothing. `new_cube` (whose id is `cube_id`) is created
        in that same transaction (ConflictError if its name is taken); `wipe` first erases
        every item of the cube (replace on import). Source clocks are kept when the cube's
        clock is 0 (a fresh cube); otherwise each distinct source clock maps, in order,
        onto the cube's next clocks, so `changes_since` sees the import as new. Version or
        id clashes raise ConflictError. Returns the cube's clock afterwards."""

    @abstractmethod
    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored embeddings (float32) of these items; ids without one are left out."""

    # --- snapshots -------------------------------------------------------------------
    @abstractmethod
    def create_snapshot(self, cube_id: str, label: str = "") -> Snapshot: ...

    @abstractmethod
    def list_snapshots(self, cube_id: str) -> list[Snapshot]: ...

    # --- jobs ------------------------------------------------------------------------
    @abstractmethod
    def enqueue_job(self, kind: str, payload: dict[str, Any], cube_id: str | None = None) -> Job:
        ...

    @abstractmethod
    def claim_job(self, kinds: Sequence[str], lease_seconds: float = 300.0) -> Job | None:
        """Atomically take the oldest queued job of these kinds, or a running one whose
        lease expired (its worker died); None when there is nothing to do."""

    @abstractmethod
    def finish_job(
        self, job_id: str, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Job:
        """Mark done (or failed, when `error` is given)."""

    @abstractmethod
    def get_job(self, job_id: str) -> Job:
        """NotFoundError if absent."""

    def count_jobs(self) -> dict[str, int]:
        """Jobs per state (queued, running, done, failed): the queue depth for metrics."""
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None: ...

    # --- stores in the vault's database ----------------------------------------------
    @property
    def governance(self) -> GovernanceStore:
        """Users, keys, ACLs, audit log, policies and reviews, in this vault's database
        (see `memosys.infra.governance`); opened on first use."""
        from memosys.infra.vault.backend_stores import open_governance

        return self._store("_governance_store", open_governance)  # type: ignore[no-any-return]

    @property
    def events(self) -> SQLEventStore:
        """The change-event log, webhooks and deliveries, in this vault's database (see
        `memosys.infra.events`); opened on first use."""
        from memosys.infra.vault.backend_stores import open_event_store

        return self._store("_event_store", open_event_store)  # type: ignore[no-any-return]

    def _store(self, key: str, opener: Callable[[Vault], Any]) -> Any:
        store = self.__dict__.get(key)
        if store is None:
            with _STORES_LOCK:
                store = self.__dict__.get(key)
                if store is None:
                    store = opener(self)
                    self.__dict__[key] = store
        return store


_STORES_LOCK = threading.Lock()
