"""In-memory cosine-similarity index over L2-normalised float32 vectors.

One instance serves one cube in one process. Keys are the SQLite integer rowids of the items
whose vectors live as float32 blobs in the embedded store; this index is a rebuildable cache of
those blobs, never the source of truth.

Two layers:

* An exact numpy store (dense float32 matrix + key -> row mapping) that is always kept. It is the
  ground truth for exact search, for filtered search over small allowed sets, and for rebuilding
  the ANN graph without going back to SQLite.
* A usearch HNSW graph, built once the index reaches ``ann_threshold`` vectors and then kept in
  step with every upsert/remove.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from usearch.index import Index

__all__ = ["VectorIndex"]

_INITIAL_CAPACITY = 64
# usearch reserves the all-ones key (uint64 max, which is int64 -1 under our bit-cast) as its
# "empty slot" sentinel: add() accepts it silently but search() never returns it. That single
# rowid is therefore kept out of the graph and scored exactly on every ANN search instead.
_ANN_RESERVED_KEY = -1


class VectorIndex:
    """Exact numpy store with an optional usearch HNSW accelerator.

    Scores are inner products of L2-normalised vectors, i.e. cosine similarity in [-1, 1].
    Inputs are re-normalised defensively (a no-op for already unit-length vectors), so the
    returned scores are cosine similarities even if a caller forgets to normalise.
    """

    # A filtered search whose allowed set is at most this many keys, or below this fraction of
    # the index, is answered exactly over just those rows (never worse than one full scan).
    # Post-filtering an oversampled ANN result only pays off when allowed keys are common
    # enough that a small candidate list already holds k of them.
    EXACT_ALLOWED_MAX = 50_000
    EXACT_ALLOWED_FRACTION = 0.25
    # When k is a sizeable fraction of the index, HNSW has to expand to ~k candidates anyway and
    # can still miss some; a full scan is then both faster and exact.
    EXACT_K_FRACTION = 1 / 16
    # Scoring a gathered row costs ~6x a row of a contiguous scan (measured at dim 384).
    GATHER_COST_RATIO = 6
    # Filtered ANN asks usearch for at least k * OVERSAMPLE candidates, growing by GROWTH.
    OVERSAMPLE = 4
    GROWTH = 4
    # HNSW parameters. usearch's defaults (M=16, ef_construction=128) give a good graph; the
    # search beam is widened from the default 64, which measured recall@10 0.94 on 3k random
    # 64-d vectors against 0.99 at 128, for well under a millisecond extra per query.
    ANN_CONNECTIVITY = 16
    ANN_EXPANSION_ADD = 128
    ANN_EXPANSION_SEARCH = 128
    # The graph keeps its own copy of every vector. f16 halves that copy with recall equal to
    # f32 in our measurements (1.00 on clustered 384-d data, 0.99+ on random 64-d); candidates
    # are rescored against the f32 store, so returned cosines are exact anyway. i8 was rejected:
    # recall fell to 0.95-0.99 and its distances are not on the cosine scale.
    ANN_DTYPE = "f16"
    # usearch removal only tombstones nodes; once the churn (removed + replaced vectors) since
    # the last build exceeds this multiple of the live size, rebuild the graph from the exact
    # store. The rebuild is amortised O(1) per mutation because it needs as many mutations first.
    ANN_REBUILD_CHURN_RATIO = 1.0

    def __init__(self, dim: int, ann_threshold: int = 20_000) -> None:
        if not isinstance(dim, int | np.integer) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if (
            not isinstance(ann_threshold, int | np.integer)
            or isinstance(ann_threshold, bool)
            or ann_threshold <= 0
        ):
            raise ValueError(f"ann_threshold must be a positive integer, got {ann_threshold!r}")
        self._dim = int(dim)
        self._ann_threshold = int(ann_threshold)
        # RLock rather than Lock so that helpers may be called from already-locked paths.
        self._lock = threading.RLock()
        self._vectors = np.empty((_INITIAL_CAPACITY, self._dim), dtype=np.float32)
        self._keys = np.empty(_INITIAL_CAPACITY, dtype=np.int64)
        self._rows: dict[int, int] = {}
        self._size = 0
        self._ann: Index | None = None
        self._ann_churn = 0
        # Graph builds run outside the lock (they take seconds to minutes) while the exact store
        # (or the old graph) keeps answering. Keys mutated meanwhile are collected in _dirty
        # and replayed into the new graph before it is swapped in.
        self._building = False
        self._dirty: set[int] | None = None

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        with self._lock:
            return self._size

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def uses_ann(self) -> bool:
        with self._lock:
            return self._ann is not None

    # ------------------------------------------------------------------ mutation

    def upsert(self, keys: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace ``vectors[i]`` under ``keys[i]``.

        If a key occurs more than once in one call, its last vector wins. The call that takes
        the index to ``ann_threshold`` also builds the HNSW graph before returning; searches
        from other threads are not blocked meanwhile (they scan exactly until it is ready).
        """
        key_arr = self._as_keys(keys)
        mat = self._as_matrix(vectors, len(key_arr))
        if key_arr.size == 0:
            return
        key_arr, mat = self._dedupe_last(key_arr, mat)

        with self._lock:
            rows = self._lookup_rows(key_arr)
            existing = rows >= 0
            if existing.any():
                self._vectors[rows[existing]] = mat[existing]
            fresh = ~existing
            n_fresh = int(fresh.sum())
            if n_fresh:
                self._reserve(self._size + n_fresh)
                start, stop = self._size, self._size + n_fresh
                self._vectors[start:stop] = mat[fresh]
                new_keys = key_arr[fresh]
                self._keys[start:stop] = new_keys
                self._rows.update(zip(new_keys.tolist(), range(start, stop), strict=True))
                self._size = stop
            if self._dirty is not None:
                self._dirty.update(key_arr.tolist())

            if self._ann is not None:
                with self._dropping_ann_on_error():
                    replaced = key_arr[existing]
                    if replaced.size:
                        # usearch refuses duplicate keys, so a replacement is remove + add.
                        self._ann_remove(self._ann, replaced)
                        self._ann_churn += int(replaced.size)
                    self._ann_add(self._ann, key_arr, mat)
            build = self._wants_build()
        if build:
            self._run_build()

    def remove(self, keys: Iterable[int]) -> None:
        """Remove ``keys``; keys that are not present are ignored."""
        key_list = keys.ravel().tolist() if isinstance(keys, np.ndarray) else list(keys)
        with self._lock:
            removed: list[int] = []
            for raw in key_list:
                key = int(raw)
                row = self._rows.pop(key, None)
                if row is None:
                    continue
                removed.append(key)
                last = self._size - 1
                if row != last:
                    # Swap-with-last keeps the matrix dense, so scans never touch dead rows.
                    self._vectors[row] = self._vectors[last]
                    moved_key = int(self._keys[last])
                    self._keys[row] = moved_key
                    self._rows[moved_key] = row
                self._size = last
            if not removed:
                return
            if self._dirty is not None:
                self._dirty.update(removed)
            if self._ann is None:
                return
            if self._size < self._ann_threshold // 2:
                # Hysteresis (half the threshold) so that hovering around the threshold does not
                # rebuild the graph over and over; below it exact search is cheap again.
                self._ann = None
                self._ann_churn = 0
                return
            with self._dropping_ann_on_error():
                self._ann_remove(self._ann, np.asarray(removed, dtype=np.int64))
                self._ann_churn += len(removed)
            build = self._wants_build()
        if build:
            self._run_build()

    # ------------------------------------------------------------------ search

    def search(
        self,
        query: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        *,
        exact: bool = False,
    ) -> list[tuple[int, float]]:
        """Return up to ``k`` ``(key, cosine)`` pairs, best first.

        ``allowed`` optionally restricts results to the given keys (unknown keys are ignored).
        ``k`` larger than the (restricted) index returns everything in it. ``exact`` skips
        the ANN graph (for measuring its recall).
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise ValueError(f"k must be an integer, got {k!r}")
        if k < 0:
            raise ValueError(f"k must be non-negative, got {k}")
        q = self._as_query(query)
        allowed_keys = None if allowed is None else self._as_allowed(allowed)
        k = int(k)

        with self._lock:
            n = self._size
            if k == 0 or n == 0:
                return []
            if allowed_keys is not None:
                if allowed_keys.size == 0:
                    return []
                m = allowed_keys.size
                if (
                    exact
                    or self._ann is None
                    or m <= self.EXACT_ALLOWED_MAX
                    or m < self.EXACT_ALLOWED_FRACTION * n
                ):
                    return self._exact_subset(q, k, allowed_keys)
                return self._ann_filtered(q, k, allowed_keys)
            if exact or self._ann is None or k >= n * self.EXACT_K_FRACTION:
                return self._exact_all(q, k)
            return self._ann_unfiltered(q, k)

    # ------------------------------------------------------------------ exact paths

    def _exact_all(self, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        scores = self._vectors[: self._size] @ q
        top = self._top_k(scores, k)
        return self._pairs(self._keys[top], scores[top])

    def _exact_subset(self, q: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        rows = self._lookup_rows(allowed)
        rows = rows[rows >= 0]
        if rows.size == 0:
            return []
        if rows.size <= 4096:
            rows = np.unique(rows)
        else:
            # Dedupe through a row mask: O(n + m) and far cheaper than np.unique on large sets;
            # the sorted rows it yields also make the gather below sequential.
            seen = np.zeros(self._size, dtype=bool)
            seen[rows] = True
            rows = np.flatnonzero(seen)
        if rows.size * self.GATHER_COST_RATIO >= self._size:
            # A gather copies every selected row into fresh memory before the product; past
            # ~1/6 of the matrix one contiguous scan plus indexing the scores is cheaper.
            scores = (self._vectors[: self._size] @ q)[rows]
        else:
            scores = self._vectors[rows] @ q
        top = self._top_k(scores, k)
        return self._pairs(self._keys[rows[top]], scores[top])

    @staticmethod
    def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` highest scores, best first (ties broken by position)."""
        part = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        order = np.argsort(-scores[part], kind="stable")
        return part[order]

    # ------------------------------------------------------------------ ANN paths

    def _ann_search(self, q: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Best-first ANN candidates as (keys, exact cosines, number usearch returned)."""
        assert self._ann is not None
        # usearch widens its beam to max(expansion_search, count) on its own. Its distances
        # (1 - dot over the f16 copies) are not used: see the rescoring below.
        matches = self._ann.search(q, count)
        keys = np.asarray(matches.keys, dtype=np.uint64).view(np.int64)
        returned = int(keys.size)
        if _ANN_RESERVED_KEY in self._rows:
            keys = np.append(keys, _ANN_RESERVED_KEY)
        rows = self._lookup_rows(keys)
        # Graph and store are kept in step under the lock, so this only guards against a bug.
        live = rows >= 0
        if not live.all():
            keys, rows = keys[live], rows[live]
        # Rescoring the few candidates against the f32 store makes the returned scores exact
        # cosines and the order among candidates exact, whatever the graph's storage dtype.
        scores = self._vectors[rows] @ q
        order = np.argsort(-scores, kind="stable")
        return keys[order], scores[order], returned

    def _ann_add(self, index: Index, keys: np.ndarray, mat: np.ndarray) -> None:
        keep = keys != _ANN_RESERVED_KEY
        if not keep.all():
            keys, mat = keys[keep], mat[keep]
        if keys.size:
            index.add(self._to_ann_keys(keys), mat)

    def _ann_remove(self, index: Index, keys: np.ndarray) -> None:
        keys = keys[keys != _ANN_RESERVED_KEY]
        if keys.size:
            # Keys absent from the graph are ignored by usearch (it reports 0 removed).
            index.remove(self._to_ann_keys(keys))

    def _ann_unfiltered(self, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        keys, scores, _ = self._ann_search(q, k)
        keys, scores = keys[:k], scores[:k]
        if keys.size < min(k, self._size):
            # HNSW over a tombstone-heavy graph can come back short; never return fewer results
            # than exist.
            return self._exact_all(q, k)
        return self._pairs(keys, scores)

    def _ann_filtered(self, q: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        assert self._ann is not None
        total = len(self._ann)
        # Callers usually pass rowids straight from an ORDER BY rowid query; only sort if needed.
        is_sorted = bool(np.all(allowed[1:] >= allowed[:-1]))
        sorted_allowed = allowed if is_sorted else np.sort(allowed)
        hit_rate = max(allowed.size / self._size, 1e-9)
        # Aim for ~2x the expected number of candidates needed for k allowed hits, so that one
        # round usually suffices; never below the k * OVERSAMPLE floor.
        count = min(total, max(k * self.OVERSAMPLE, math.ceil(2 * k / hit_rate)))
        # Past this many candidates the HNSW beam costs more than scanning the allowed rows.
        max_count = max(k * self.OVERSAMPLE, int(total * self.EXACT_K_FRACTION))
        while count <= max_count:
            keys, scores, returned = self._ann_search(q, count)
            at = np.minimum(np.searchsorted(sorted_allowed, keys), sorted_allowed.size - 1)
            mask = sorted_allowed[at] == keys
            hits = int(mask.sum())
            if hits >= k:
                return self._pairs(keys[mask][:k], scores[mask][:k])
            if count >= total or returned < count:
                break
            count = min(total, count * self.GROWTH)
        # Too few allowed hits near the query: either fewer than k allowed keys exist (the
        # exact path returns all of them) or they sit far down the ranking, where a scan of
        # just the allowed rows is cheaper and exact.
        return self._exact_subset(q, k, allowed)

    # ------------------------------------------------------------------ ANN lifecycle

    @contextlib.contextmanager
    def _dropping_ann_on_error(self) -> Iterator[None]:
        """On a failed graph update, drop the graph rather than leave it out of step.

        The exact store already holds the change, so searches stay correct (exact) and the next
        mutation rebuilds the graph; the error still reaches the caller, and a retried upsert
        or remove is idempotent.
        """
        try:
            yield
        except BaseException:
            self._ann = None
            self._ann_churn = 0
            raise

    def _wants_build(self) -> bool:
        """Whether a (re)build is due; caller holds the lock."""
        if self._building:
            return False
        if self._ann is None:
            return self._size >= self._ann_threshold
        return self._ann_churn > self.ANN_REBUILD_CHURN_RATIO * max(self._size, 1)

    def _new_ann_index(self) -> Index:
        return Index(
            ndim=self._dim,
            metric="ip",
            dtype=self.ANN_DTYPE,
            connectivity=self.ANN_CONNECTIVITY,
            expansion_add=self.ANN_EXPANSION_ADD,
            expansion_search=self.ANN_EXPANSION_SEARCH,
        )

    def _fill_ann(self, index: Index, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Bulk-load a fresh graph. Runs WITHOUT the lock, on private snapshot arrays."""
        self._ann_add(index, keys, vectors)

    def _run_build(self) -> None:
        """Build a graph from a snapshot off-lock, then replay concurrent changes and swap in."""
        with self._lock:
            if not self._wants_build():
                return  # another thread got there first
            self._building = True
            self._dirty = set()
            n = self._size
            # Copies, because swap-with-last removal and capacity growth rewrite the live
            # arrays while usearch is still reading.
            keys = self._keys[:n].copy()
            vectors = self._vectors[:n].copy()
        try:
            index = self._new_ann_index()
            self._fill_ann(index, keys, vectors)
            del keys, vectors
            with self._lock:
                assert self._dirty is not None
                dirty = np.fromiter(self._dirty, dtype=np.int64, count=len(self._dirty))
                if self._size < self._ann_threshold // 2:
                    # Shrunk while building (and any old graph was dropped): not worth it.
                    return
                if dirty.size:
                    self._ann_remove(index, dirty)
                    rows = self._lookup_rows(dirty)
                    live = rows >= 0
                    self._ann_add(index, dirty[live], self._vectors[rows[live]])
                self._ann = index
                # The replay tombstoned up to one node per dirty key.
                self._ann_churn = int(dirty.size)
        finally:
            with self._lock:
                self._building = False
                self._dirty = None

    # ------------------------------------------------------------------ storage helpers

    def _reserve(self, needed: int) -> None:
        capacity = self._vectors.shape[0]
        if needed <= capacity:
            return
        # Doubling keeps appends amortised O(1).
        new_capacity = max(needed, capacity * 2)
        vectors = np.empty((new_capacity, self._dim), dtype=np.float32)
        vectors[: self._size] = self._vectors[: self._size]
        keys = np.empty(new_capacity, dtype=np.int64)
        keys[: self._size] = self._keys[: self._size]
        self._vectors, self._keys = vectors, keys

    def _lookup_rows(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent."""
        # map() over dict.get is ~30% faster than a generator expression for large batches.
        found = map(self._rows.get, keys.tolist(), itertools.repeat(-1))
        return np.fromiter(found, dtype=np.intp, count=keys.size)

    @staticmethod
    def _to_ann_keys(keys: np.ndarray) -> np.ndarray:
        # usearch keys are uint64; a bit-cast (not a value cast) keeps any int64 rowid,
        # even a negative one, round-trippable.
        return np.ascontiguousarray(keys, dtype=np.int64).view(np.uint64)

    @staticmethod
    def _pairs(keys: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
        return list(zip(keys.tolist(), scores.astype(np.float64).tolist(), strict=True))

    # ------------------------------------------------------------------ input validation

    @staticmethod
    def _as_keys(keys: Sequence[int] | np.ndarray) -> np.ndarray:
        arr = np.asarray(keys)
        if arr.ndim != 1:
            raise ValueError(f"keys must be a 1-D sequence of integers, got shape {arr.shape}")
        if arr.size == 0:
            return arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"keys must be integers, got dtype {arr.dtype}")
        if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
            raise ValueError("keys must fit in a signed 64-bit integer (SQLite rowid range)")
        return arr.astype(np.int64, copy=False)

    def _as_matrix(self, vectors: np.ndarray, n: int) -> np.ndarray:
        mat = np.asarray(vectors, dtype=np.float32)
        if mat.ndim == 1 and n == 1:
            mat = mat.reshape(1, -1)
        if n == 0 and mat.size == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        if mat.ndim != 2 or mat.shape[1] != self._dim:
            raise ValueError(
                f"vector dimension mismatch: index has dim={self._dim}, "
                f"got vectors of shape {mat.shape}"
            )
        if mat.shape[0] != n:
            raise ValueError(f"got {n} keys but {mat.shape[0]} vectors")
        return self._normalised(mat, "vectors")

    def _as_query(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, dtype=np.float32)
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        if q.ndim != 1 or q.shape[0] != self._dim:
            raise ValueError(
                f"query dimension mismatch: index has dim={self._dim}, "
                f"got query of shape {np.shape(query)}"
            )
        return self._normalised(q.reshape(1, -1), "query")[0]

    @staticmethod
    def _normalised(mat: np.ndarray, what: str) -> np.ndarray:
        if not np.isfinite(mat).all():
            raise ValueError(f"{what} contain non-finite values (NaN or inf)")
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{what} contain a zero vector, which has no cosine similarity")
        # Always returns a fresh contiguous array, so later caller-side edits cannot leak in.
        return np.ascontiguousarray(mat / norms, dtype=np.float32)

    @staticmethod
    def _as_allowed(allowed: np.ndarray) -> np.ndarray:
        arr = np.asarray(allowed)
        if arr.size == 0:
            return np.empty(0, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"allowed must be an integer array, got dtype {arr.dtype}")
        # No np.unique here: on 50k keys it costs as much as the whole exact scan. Duplicates
        # are harmless (deduped by row on the exact path, irrelevant to membership tests).
        return arr.ravel().astype(np.int64, copy=False)

    @staticmethod
    def _dedupe_last(keys: np.ndarray, mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if keys.size < 2:
            return keys, mat
        _, first_in_reversed = np.unique(keys[::-1], return_index=True)
        if first_in_reversed.size == keys.size:
            return keys, mat
        keep = np.sort(keys.size - 1 - first_in_reversed)
        return keys[keep], mat[keep]
