"""Tests for the per-cube in-memory vector index (real numpy + usearch, no mocks)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from usearch.index import Index

from memosys.infra.vault.vector_index import VectorIndex


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(
    keys: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int
) -> list[tuple[int, float]]:
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(keys[i]), float(scores[i])) for i in order]


def _keys_of(results: list[tuple[int, float]]) -> list[int]:
    return [key for key, _ in results]


def _assert_same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    """Same keys with the same scores rank by rank; float noise may swap exact ties only."""
    assert set(_keys_of(got)) == set(_keys_of(want))
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


# ---------------------------------------------------------------------------- exact path


def test_empty_index_returns_nothing() -> None:
    index = VectorIndex(dim=8)
    assert len(index) == 0
    assert index.search(np.ones(8, dtype=np.float32), 5) == []
    assert index.search(np.ones(8, dtype=np.float32), 5, allowed=np.array([1, 2])) == []
    assert not index.uses_ann


def test_exact_search_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    keys = rng.choice(10**9, size=500, replace=False).astype(np.int64)
    vectors = _unit(rng, 500, 32)
    index = VectorIndex(dim=32)
    index.upsert(keys, vectors)
    assert len(index) == 500 and not index.uses_ann

    for query in _unit(rng, 20, 32):
        got = index.search(query, 10)
        want = _brute_force(keys, vectors, query, 10)
        _assert_same_ranking(got, want)
        assert all(isinstance(key, int) and isinstance(score, float) for key, score in got)


def test_self_match_scores_one_and_results_are_best_first() -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 50, 16)
    index = VectorIndex(dim=16)
    index.upsert(np.arange(50), vectors)
    results = index.search(vectors[7], 50)
    assert results[0][0] == 7
    assert results[0][1] == pytest.approx(1.0, abs=1e-5)
    scores = [s for _, s in results]
    assert scores == sorted(scores, reverse=True)


def test_k_larger_than_index_returns_everything() -> None:
    rng = np.random.default_rng(3)
    index = VectorIndex(dim=8)
    index.upsert([1, 2, 3], _unit(rng, 3, 8))
    assert sorted(_keys_of(index.search(_unit(rng, 1, 8)[0], 100))) == [1, 2, 3]
    assert index.search(_unit(rng, 1, 8)[0], 0) == []


def test_upsert_replaces_existing_key() -> None:
    rng = np.random.default_rng(4)
    vectors = _unit(rng, 10, 16)
    index = VectorIndex(dim=16)
    index.upsert(np.arange(10), vectors)

    replacement = _unit(rng, 1, 16)
    index.upsert([3], replacement)
    assert len(index) == 10
    top_key, top_score = index.search(replacement[0], 1)[0]
    assert top_key == 3 and top_score == pytest.approx(1.0, abs=1e-5)
    # The old vector for key 3 is gone: querying it no longer finds key 3 at similarity 1.
    for key, score in index.search(vectors[3], 10):
        if key == 3:
            assert score < 0.99


def test_duplicate_keys_in_one_batch_last_wins() -> None:
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 3, 8)
    index = VectorIndex(dim=8)
    index.upsert([7, 8, 7], vectors)
    assert len(index) == 2
    assert index.search(vectors[2], 1)[0][0] == 7


def test_remove_never_returns_removed_keys() -> None:
    rng = np.random.default_rng(6)
    vectors = _unit(rng, 200, 16)
    keys = np.arange(1000, 1200)
    index = VectorIndex(dim=16)
    index.upsert(keys, vectors)

    removed = set(keys[::3].tolist())
    index.remove(list(removed) + [-5, 999_999])  # unknown keys are ignored
    assert len(index) == 200 - len(removed)

    survivors = np.array([k not in removed for k in keys.tolist()])
    for query in _unit(rng, 10, 16):
        got = index.search(query, 500)
        assert not removed & set(_keys_of(got))
        want = _brute_force(keys[survivors], vectors[survivors], query, 500)
        _assert_same_ranking(got, want)
    # Removed vectors queried directly are not found either.
    for key in list(removed)[:5]:
        assert key not in _keys_of(index.search(vectors[key - 1000], 20))

    index.remove(keys.tolist())
    assert len(index) == 0
    assert index.search(vectors[0], 5) == []


def test_storage_grows_and_stays_consistent_through_swap_removals() -> None:
    rng = np.random.default_rng(7)
    index = VectorIndex(dim=4)
    reference: dict[int, np.ndarray] = {}
    for start in range(0, 1000, 37):
        batch = _unit(rng, 37, 4)
        index.upsert(np.arange(start, start + 37), batch)
        reference.update(zip(range(start, start + 37), batch, strict=True))
    index.remove(range(0, 1036, 2))
    for key in range(0, 1036, 2):
        del reference[key]
    fresh = _unit(rng, 10, 4)
    index.upsert(np.arange(5000, 5010), fresh)
    reference.update(zip(range(5000, 5010), fresh, strict=True))
    assert len(index) == len(reference) == 1036 - 518 + 10

    ref_keys = np.array(list(reference))
    ref_vectors = np.stack(list(reference.values()))
    for query in _unit(rng, 10, 4):
        got = index.search(query, 2000)
        _assert_same_ranking(got, _brute_force(ref_keys, ref_vectors, query, 2000))


def test_allowed_restricts_results() -> None:
    rng = np.random.default_rng(8)
    keys = np.arange(300)
    vectors = _unit(rng, 300, 16)
    index = VectorIndex(dim=16)
    index.upsert(keys, vectors)

    allowed = np.array([5, 17, 42, 99, 250, 123456], dtype=np.int64)  # includes an unknown key
    query = _unit(rng, 1, 16)[0]
    got = index.search(query, 3, allowed=allowed)
    subset = np.array([5, 17, 42, 99, 250])
    _assert_same_ranking(got, _brute_force(subset, vectors[subset], query, 3))
    assert sorted(_keys_of(index.search(query, 100, allowed=allowed))) == subset.tolist()
    assert index.search(query, 3, allowed=np.array([], dtype=np.int64)) == []

    # A large allowed set takes the full-scan-then-index branch; results must agree.
    big = keys[keys % 2 == 0]
    got_big = index.search(query, 10, allowed=big)
    _assert_same_ranking(got_big, _brute_force(big, vectors[big], query, 10))


def test_allowed_with_duplicates_and_large_sets() -> None:
    rng = np.random.default_rng(10)
    keys = np.arange(10_000, 20_000)
    vectors = _unit(rng, keys.size, 8)
    index = VectorIndex(dim=8)
    index.upsert(keys, vectors)
    query = _unit(rng, 1, 8)[0]
    # > 4096 rows and < 1/6 of the index: row-mask dedupe followed by a gather.
    subset = rng.choice(keys, size=1500, replace=False)
    allowed = np.concatenate([subset, subset, subset[:200]])
    rng.shuffle(allowed)
    got = index.search(query, 25, allowed=allowed)
    want = _brute_force(subset, vectors[subset - 10_000], query, 25)
    _assert_same_ranking(got, want)
    assert len(index.search(query, 10_000, allowed=allowed)) == subset.size


def test_negative_and_large_keys_round_trip() -> None:
    # -1 is usearch's reserved "empty" key once bit-cast to uint64; it must still be found on
    # the ANN path, as must the other extremes of the SQLite rowid range.
    rng = np.random.default_rng(9)
    special = np.array([-1, -3, 0, 2**62, 2**63 - 1, -(2**63)], dtype=np.int64)
    keys = np.concatenate([special, np.arange(1, 301)])
    vectors = _unit(rng, keys.size, 16)
    for threshold in (10**6, 50):
        index = VectorIndex(dim=16, ann_threshold=threshold)
        index.upsert(keys, vectors)
        assert index.uses_ann == (threshold == 50)
        for key, vector in zip(special.tolist(), vectors[: special.size], strict=True):
            top = index.search(vector, 3)
            assert top[0][0] == key and top[0][1] == pytest.approx(1.0, abs=1e-5)
            assert index.search(vector, 1, allowed=np.array([key]))[0][0] == key
        index.remove(special.tolist())
        for vector in vectors[: special.size]:
            assert not set(special.tolist()) & set(_keys_of(index.search(vector, 5)))


# ---------------------------------------------------------------------------- validation


def test_dimension_mismatch_raises() -> None:
    index = VectorIndex(dim=8)
    with pytest.raises(ValueError, match="dimension mismatch"):
        index.upsert([1], np.ones((1, 7), dtype=np.float32))
    index.upsert([1], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="dimension mismatch"):
        index.search(np.ones(9, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="2 keys but 1 vectors"):
        index.upsert([1, 2], np.ones((1, 8), dtype=np.float32))


def test_non_finite_and_zero_vectors_raise() -> None:
    index = VectorIndex(dim=4)
    bad = np.ones((2, 4), dtype=np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        index.upsert([1, 2], bad)
    assert len(index) == 0
    with pytest.raises(ValueError, match="non-finite"):
        index.search(np.array([1.0, np.inf, 0.0, 0.0]), 1)
    with pytest.raises(ValueError, match="zero vector"):
        index.upsert([1], np.zeros((1, 4), dtype=np.float32))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        VectorIndex(dim=0)
    with pytest.raises(ValueError):
        VectorIndex(dim=4, ann_threshold=0)
    index = VectorIndex(dim=4)
    with pytest.raises(ValueError, match="k must be non-negative"):
        index.search(np.ones(4), -1)
    with pytest.raises(ValueError, match="integers"):
        index.upsert(np.array([1.5]), np.ones((1, 4)))


# ---------------------------------------------------------------------------- ANN path

ANN_DIM = 64
ANN_N = 3000


@pytest.fixture(scope="module")
def ann_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    keys = rng.choice(10**12, size=ANN_N, replace=False).astype(np.int64)
    return keys, _unit(rng, ANN_N, ANN_DIM), _unit(rng, 50, ANN_DIM)


def _recall_at_10(
    index: VectorIndex,
    keys: np.ndarray,
    vectors: np.ndarray,
    queries: np.ndarray,
    allowed: np.ndarray | None = None,
) -> float:
    hits = 0
    for query in queries:
        truth = set(_keys_of(_brute_force(keys, vectors, query, 10)))
        got = index.search(query, 10, allowed=allowed)
        assert len(got) == 10
        hits += len(truth & set(_keys_of(got)))
    return hits / (10 * len(queries))


def test_ann_builds_at_threshold_and_has_high_recall(
    ann_data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    keys, vectors, queries = ann_data
    index = VectorIndex(dim=ANN_DIM, ann_threshold=500)
    index.upsert(keys[:499], vectors[:499])
    assert not index.uses_ann
    index.upsert(keys[499:], vectors[499:])
    assert index.uses_ann and len(index) == ANN_N

    assert _recall_at_10(index, keys, vectors, queries) >= 0.95
    # Scores are cosine similarities, consistent with the exact store.
    query = queries[0]
    by_key = dict(zip(keys.tolist(), (vectors @ query).tolist(), strict=True))
    for key, score in index.search(query, 10):
        assert score == pytest.approx(by_key[key], abs=1e-5)


def test_ann_honours_removals_and_upserts_after_build(
    ann_data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    keys, vectors, queries = ann_data
    rng = np.random.default_rng(43)
    index = VectorIndex(dim=ANN_DIM, ann_threshold=500)
    index.upsert(keys, vectors)
    assert index.uses_ann

    # Remove the current top hits of every query so the graph must route around tombstones.
    removed: set[int] = set()
    for query in queries[:10]:
        removed.update(_keys_of(index.search(query, 5)))
    removed.update(keys[:300].tolist())
    index.remove(removed)
    assert index.uses_ann
    for query in queries:
        assert not removed & set(_keys_of(index.search(query, 20)))

    # Replace some survivors with new vectors, and add brand-new keys.
    live_mask = np.array([k not in removed for k in keys.tolist()])
    live_keys, live_vectors = keys[live_mask].copy(), vectors[live_mask].copy()
    replaced = np.arange(0, 200)
    live_vectors[replaced] = _unit(rng, replaced.size, ANN_DIM)
    index.upsert(live_keys[replaced], live_vectors[replaced])
    new_keys = np.arange(-1, -101, -1, dtype=np.int64)
    new_vectors = _unit(rng, 100, ANN_DIM)
    index.upsert(new_keys, new_vectors)
    all_keys = np.concatenate([live_keys, new_keys])
    all_vectors = np.concatenate([live_vectors, new_vectors])
    assert len(index) == all_keys.size

    for key, vector in zip(
        live_keys[replaced][:20].tolist(), live_vectors[replaced][:20], strict=True
    ):
        top_key, top_score = index.search(vector, 1)[0]
        assert top_key == key and top_score == pytest.approx(1.0, abs=1e-5)
    for key, vector in zip(new_keys[:20].tolist(), new_vectors[:20], strict=True):
        assert index.search(vector, 1)[0][0] == key
    assert _recall_at_10(index, all_keys, all_vectors, queries) >= 0.95
    for query in queries:
        assert not removed & set(_keys_of(index.search(query, 20)))


def test_ann_filtered_search(ann_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    keys, vectors, queries = ann_data
    index = VectorIndex(dim=ANN_DIM, ann_threshold=500)
    index.upsert(keys, vectors)
    # Half the keys: above the 25% fraction, so with the 50k absolute cap lowered this goes
    # through oversampled ANN + post-filter.
    index.EXACT_ALLOWED_MAX = 0
    allowed = keys[::2]
    allowed_set = set(allowed.tolist())
    mask = np.isin(keys, allowed)
    assert _recall_at_10(index, keys[mask], vectors[mask], queries, allowed=allowed) >= 0.95
    for query in queries[:10]:
        got = index.search(query, 10, allowed=allowed)
        assert set(_keys_of(got)) <= allowed_set
        assert index.search(query, 10, allowed=np.sort(allowed)) == got

    # Mostly-unknown allowed keys: the oversampled ANN pass finds too few hits and must fall
    # back to an exact scan of the few real ones rather than return a short list.
    index.EXACT_ALLOWED_FRACTION = 0.0
    real = keys[[5, 50, 500]]
    sparse = np.concatenate([np.arange(-5000, -2000), real])
    for query in queries[:5]:
        assert sorted(_keys_of(index.search(query, 10, allowed=sparse))) == sorted(real.tolist())

    # A small allowed set goes exact even with ANN on, and must be exactly right.
    small = keys[:40]
    for query in queries[:10]:
        got = index.search(query, 5, allowed=small)
        _assert_same_ranking(got, _brute_force(small, vectors[:40], query, 5))


def test_ann_dropped_when_index_shrinks_well_below_threshold() -> None:
    rng = np.random.default_rng(44)
    vectors = _unit(rng, 600, 16)
    index = VectorIndex(dim=16, ann_threshold=500)
    index.upsert(np.arange(600), vectors)
    assert index.uses_ann
    index.remove(range(300))
    assert index.uses_ann  # hysteresis: still above threshold / 2
    index.remove(range(300, 360))
    assert not index.uses_ann
    query = vectors[400]
    assert index.search(query, 1)[0][0] == 400


def test_ann_rebuilds_after_heavy_churn() -> None:
    rng = np.random.default_rng(45)
    index = VectorIndex(dim=16, ann_threshold=100)
    index.upsert(np.arange(200), _unit(rng, 200, 16))
    for _ in range(3):
        fresh = _unit(rng, 200, 16)
        index.upsert(np.arange(200), fresh)
    assert index._ann is not None and len(index._ann) == 200
    assert index._ann_churn <= 200
    assert index.search(fresh[17], 1)[0][0] == 17


def test_concurrent_mutation_and_search_is_consistent() -> None:
    rng = np.random.default_rng(46)
    dim = 16
    index = VectorIndex(dim=dim, ann_threshold=300)
    index.upsert(np.arange(400), _unit(rng, 400, dim))
    queries = _unit(rng, 20, dim)
    errors: list[Exception] = []

    def writer() -> None:
        local = np.random.default_rng(47)
        try:
            for step in range(50):
                batch = np.arange(1000 + step * 10, 1010 + step * 10)
                index.upsert(batch, _unit(local, 10, dim))
                index.remove(batch[:5].tolist())
        except Exception as exc:  # surfaced to the main thread, where pytest sees it
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(50):
                for query in queries:
                    results = index.search(query, 10)
                    assert len(results) == 10
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(index) == 400 + 50 * 5


class _GatedBuildIndex(VectorIndex):
    """Holds the off-lock graph build open until the test releases it."""

    def __init__(self, dim: int, ann_threshold: int) -> None:
        super().__init__(dim, ann_threshold)
        self.build_started = threading.Event()
        self.release_build = threading.Event()

    def _fill_ann(self, index: Index, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.build_started.set()
        assert self.release_build.wait(10)
        super()._fill_ann(index, keys, vectors)


def test_graph_build_does_not_block_and_replays_concurrent_changes() -> None:
    rng = np.random.default_rng(48)
    vectors = _unit(rng, 600, 16)
    index = _GatedBuildIndex(dim=16, ann_threshold=500)
    index.upsert(np.arange(499), vectors[:499])
    builder = threading.Thread(target=index.upsert, args=(np.arange(499, 600), vectors[499:]))
    builder.start()
    try:
        assert index.build_started.wait(10)
        # The build holds no lock: reads and writes go on against the exact store.
        assert not index.uses_ann
        assert index.search(vectors[10], 1)[0][0] == 10
        index.remove([0, 1, 2])
        changed_keys = [10, 11, 12, 1000, 1001]
        changed = _unit(rng, len(changed_keys), 16)
        index.upsert(changed_keys, changed)
    finally:
        index.release_build.set()
        builder.join(10)
    assert not builder.is_alive()
    assert index.uses_ann
    assert index._ann is not None and len(index._ann) == len(index) == 600 - 3 + 2

    for key, vector in zip(changed_keys, changed, strict=True):
        top_key, top_score = index.search(vector, 1)[0]
        assert top_key == key and top_score == pytest.approx(1.0, abs=1e-5)
    for key in (0, 1, 2):
        assert key not in _keys_of(index.search(vectors[key], 10))
