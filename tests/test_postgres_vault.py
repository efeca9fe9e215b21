"""The PostgreSQL backend beyond the shared contract: the runtime end to end, concurrent
worker processes, migrations, the HNSW path, and `db copy` between backends.

PostgreSQL is the session's embedded server (tests/pg_fixture.py); the backend-agnostic
suite (tests/test_vault_contract.py) already runs on it through conftest's BACKENDS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

import memosys
from helpers import make_cube, make_item, unit_vectors
from memosys.config import Settings
from memosys.errors import ConflictError, NotFoundError, StorageError
from memosys.infra.vault import open_vault
from memosys.infra.vault.base import ItemFilter, Write
from memosys.infra.vault.copy import copy_database, verify
from memosys.infra.vault.postgres import PostgresVault
from memosys.infra.vault.postgres_schema import LATEST, MIGRATIONS, migrate
from memosys.interface.cli import app
from memosys.system import MemOS
from memosys.types import CubeConfig, MemCube, MemoryState
from pg_fixture import SERVER as PG

_SRC = str(Path(memosys.__file__).resolve().parents[1])


@pytest.fixture
def pg_url() -> str:
    return PG.new_database()


@pytest.fixture
def pg_mos(pg_url: str, home: Path, embedder) -> MemOS:
    runtime = MemOS(Settings.load(home), vault=PostgresVault(pg_url, pool_size=4),
                    embedder=embedder)
    yield runtime
    runtime.close()


def _rows(url: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


# --- the runtime on PostgreSQL -------------------------------------------------------------
def test_memos_end_to_end_on_postgres(pg_mos: MemOS, pg_url: str) -> None:
    mos = pg_mos
    mos.create_cube("alice")
    [beagle, _, climbing] = mos.add("alice", messages=[
        {"role": "user", "name": "Alice", "content": "I adopted a beagle called Rex."},
        {"role": "assistant", "content": "Lovely! How old is he?"},
        {"role": "user", "name": "Alice", "content": "Two years. I also love climbing."},
    ], user="alice", session="s1")
    [tea] = mos.add("alice", "Alice's favourite drink is green tea", memory_type="preference",
                    tags=["drinks"])
    hits = mos.search("which dog breed does Alice have?", "alice", top_k=2)
    assert hits[0].item.id == beagle.id
    assert "vector" in hits[0].ranks and "bm25" in hits[0].ranks
    assert mos.search("beverage", "alice", top_k=1)[0].item.id == tea.id  # dense only
    assert mos.get(beagle.id).stats.access_count >= 1
    assert mos.list("alice", {"tags": ["drinks"]})[0].id == tea.id

    snap = mos.snapshot("alice", "before edits")
    updated = mos.update(tea.id, text="Alice's favourite drink is now black coffee")
    assert updated.version == 2
    assert mos.search("coffee", "alice", top_k=1)[0].item.id == tea.id
    with pytest.raises(ConflictError):
        mos.update(tea.id, text="stale", expected_version=1)
    restored = mos.rollback(tea.id, 1)
    assert (restored.version, restored.text) == (3, "Alice's favourite drink is green tea")
    assert [r.op for r in mos.history(tea.id)] == ["add", "update", "rollback"]
    mos.delete(climbing.id)
    assert climbing.id not in {h.item.id for h in mos.search("climbing", "alice", top_k=5)}
    back = mos.rollback_cube("alice", snap)
    assert {i.id for i in back} == {climbing.id}  # tea is already back as it was
    assert mos.get(climbing.id).state == MemoryState.ACTIVE
    mos.feedback(tea.id, 2.0)
    assert mos.get(tea.id).stats.feedback_score == 2.0
    assert mos.stats("alice")["cubes"][0]["items"] == 4

    assert mos.purge([beagle.id]) == 1
    with pytest.raises(NotFoundError):
        mos.get(beagle.id)
    assert beagle.id not in {h.item.id for h in mos.search("beagle Rex", "alice", top_k=5)}
    for table, column in (("items", "id"), ("item_versions", "item_id"),
                          ("vectors", "item_id"), ("item_stats", "item_id")):
        assert _rows(pg_url, f"SELECT count(*) FROM {table} WHERE {column} = %s",
                     beagle.id) == [(0,)]
    assert _rows(pg_url, "SELECT count(*) FROM items WHERE doc LIKE %s", "%beagle%") == [(0,)]
    assert _rows(pg_url, "SELECT doc_count FROM cubes") == [(3,)]


def test_open_vault_selects_postgres_from_the_url(pg_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMOSYS_DATABASE_URL", pg_url)
    vault = open_vault(Settings.load(tmp_path))
    assert isinstance(vault, PostgresVault)
    vault.close()
    vault = open_vault(Settings.load(tmp_path, database_url="postgres" + pg_url[10:]))
    assert isinstance(vault, PostgresVault)
    vault.close()


def test_text_that_postgres_text_cannot_hold_round_trips(pg_url: str) -> None:
    vault = PostgresVault(pg_url)
    cube = vault.create_cube(make_cube())
    odd = make_item(cube, "nul\x00byte and 'quotes' \\ backslash", tags=["t\x00g"])
    vault.commit(cube.id, [Write(odd, "add", None, unit_vectors(1)[0])])
    assert vault.get_many([odd.id])[odd.id].text == odd.text
    assert [i.id for i in vault.list_items(ItemFilter(tags=("t\x00g",)))] == [odd.id]
    assert [i for i, _ in vault.search_text("byte backslash", ItemFilter(), 5)] == [odd.id]
    vault.close()


# --- the HNSW path -------------------------------------------------------------------------
def test_pruned_bm25_is_exactly_bm25_over_every_match(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MaxScore pruning returns what scoring every matching document returns: checked
    against BM25 computed here from the stored tsvectors, on a cube where most documents
    hold only the common word, so the pruning does skip them."""
    import math
    import re

    from memosys.infra.vault import postgres_search

    vault = PostgresVault(pg_url)
    try:
        cube = vault.create_cube(make_cube())
        texts = ([f"the garden note {i} of the garden club" for i in range(300)]
                 + [f"a rare orchid {i} in the garden" for i in range(12)]
                 + [f"an orchid, an orchid and an orchid {i}" for i in range(3)])
        writes = [Write(make_item(cube, t), "add", None, v)
                  for t, v in zip(texts, unit_vectors(len(texts), seed=5), strict=True)]
        vault.commit(cube.id, writes)
        rounds: list[list[str]] = []
        scored = postgres_search.SearchMixin._bm25

        def spy(self, conn, essential, *args, **kwargs):  # type: ignore[no-untyped-def]
            rounds.append(list(essential))
            return scored(self, conn, essential, *args, **kwargs)

        monkeypatch.setattr(postgres_search.SearchMixin, "_bm25", spy)
        flt = ItemFilter(cube_ids=(cube.id,))
        got = vault.search_text("orchid garden", flt, 5)
        assert rounds == [["orchid"]]  # the 300 garden-only documents were never scored

        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT id, tsv::text, doc_len, seq FROM items "
                                "WHERE cube_id = %s", (cube.id,)).fetchall()
        docs = {i: (dict((m[0], len(m[1].split(","))) for m in
                         re.findall(r"'([^']+)':([\d,]+)", tsv)), dl, seq)
                for i, tsv, dl, seq in rows}
        n = len(docs)
        avgdl = sum(dl for _, dl, _ in docs.values()) / n
        df = {lex: sum(lex in d for d, _, _ in docs.values()) for lex in ("orchid", "garden")}

        def bm25(terms: dict[str, int], dl: int) -> float:
            return sum(max(math.log((n - df[t] + 0.5) / (df[t] + 0.5)), 1e-6) * terms[t] * 2.2
                       / (terms[t] + 1.2 * (0.25 + 0.75 * dl / avgdl)) for t in df if t in terms)

        expected = sorted(((bm25(t, dl), -seq, i) for i, (t, dl, seq) in docs.items()
                           if any(x in t for x in df)), reverse=True)[:5]
        assert [i for i, _ in got] == [i for _, _, i in expected]
        assert [s for _, s in got] == pytest.approx([s for s, _, _ in expected], rel=1e-9)
    finally:
        vault.close()


def test_cube_gets_an_hnsw_index_past_the_threshold(pg_url: str) -> None:
    vault = PostgresVault(pg_url, ann_threshold=60)
    cube = vault.create_cube(make_cube(dim=16))
    vecs = unit_vectors(100, seed=5)
    items = vault.commit(cube.id, [Write(make_item(cube, f"memory {i}"), "add", None, v)
                                   for i, v in enumerate(vecs[:50])])
    assert not vault.vector_index(cube.id).uses_ann
    items += vault.commit(cube.id, [Write(make_item(cube, f"memory {i}"), "add", None, v)
                                    for i, v in enumerate(vecs[50:], 50)])
    probe = vault.vector_index(cube.id)
    assert probe.uses_ann and len(probe) == 100
    flt = ItemFilter(cube_ids=(cube.id,))
    for i in (0, 42, 99):
        assert vault.search_vector(vecs[i], flt, 3)[0][0] == items[i].id
    # a filter the index cannot satisfy falls back to exact search over what it allows
    only = ItemFilter(cube_ids=(cube.id,), ids=(items[7].id, items[8].id))
    assert {i for i, _ in vault.search_vector(vecs[0], only, 5)} == {items[7].id, items[8].id}
    # a new embedder dimension drops the index (it casts to the old one) and rebuilds it
    wide = {item.id: v for item, v in zip(items, unit_vectors(100, dim=24, seed=6),
                                          strict=True)}
    vault.replace_vectors(cube.id, wide, cube.config.model_copy(update={"embedding_dim": 24}))
    probe = vault.vector_index(cube.id)
    assert probe.dim == 24 and probe.uses_ann
    assert vault.search_vector(wide[items[3].id], flt, 1)[0][0] == items[3].id
    vault.close()


# --- migrations ----------------------------------------------------------------------------
def test_workers_starting_at_once_migrate_once() -> None:
    url = PG.new_database(migrated=False)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            applied.append([m.version for m in migrate(url)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(v for a in applied for v in a) == [m.version for m in MIGRATIONS]
    assert _rows(url, "SELECT version FROM schema_migrations ORDER BY version") == [
        (m.version,) for m in MIGRATIONS]


def test_an_old_schema_is_upgraded_forward_and_a_newer_one_refused(tmp_path: Path) -> None:
    url = PG.new_database(migrated=False)
    assert [m.version for m in migrate(url, target=1)] == [1]
    status = CliRunner().invoke(app, ["db", "status", "--url", url, "--json"])
    assert json.loads(status.output)["pending"] == [
        {"version": m.version, "name": m.name} for m in MIGRATIONS[1:]]
    with pytest.raises(StorageError, match="db upgrade"):
        PostgresVault(url, migrate=False)
    result = CliRunner().invoke(app, ["db", "upgrade", "--url", url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "backend": "postgres", "version": LATEST,
        "applied": [{"version": m.version, "name": m.name} for m in MIGRATIONS[1:]]}
    PostgresVault(url, migrate=False).close()
    with psycopg.connect(url) as conn:
        # the planner knows how selective the JSON filter fields are (migration 7)
        assert {r[0] for r in conn.execute("SELECT stxname FROM pg_statistic_ext")} >= {
            "items_kind_stats", "items_visibility_stats"}
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
    with pytest.raises(StorageError, match="Upgrade memosys"):
        PostgresVault(url)


def test_threads_racing_on_one_version_have_exactly_one_winner(pg_url: str) -> None:
    vault = PostgresVault(pg_url, pool_size=6)
    cube = vault.create_cube(make_cube())
    [item] = vault.commit(cube.id, [Write(make_item(cube, "contested"), "add", None,
                                          unit_vectors(1)[0])])
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def race(n: int) -> None:
        barrier.wait()
        try:
            vault.commit(cube.id, [Write(item.model_copy(update={"text": f"winner {n}"}),
                                         "update", 1)])
            outcomes.append("won")
        except ConflictError:
            outcomes.append("lost")

    threads = [threading.Thread(target=race, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    assert [r.item.version for r in vault.history(item.id)] == [1, 2]
    assert vault.get_cube(cube.id).clock == 2
    vault.close()


# --- concurrent worker processes -----------------------------------------------------------
_WORKER = textwrap.dedent("""
    import json, random, sys, time, zlib
    sys.path.insert(0, {src!r})
    import numpy as np
    from memosys.config import Settings
    from memosys.errors import ConflictError
    from memosys.infra.vault.postgres import PostgresVault
    from memosys.system import MemOS

    class HashEmbedder:  # bag of hashed words: cheap, deterministic, searchable
        id, dim = "test-hash", 64
        def embed(self, texts):
            out = np.zeros((len(texts), 64), dtype=np.float32)
            for row, text in enumerate(texts):
                for word in text.lower().split():
                    out[row, zlib.crc32(word.encode()) % 64] += 1.0
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    tag, url, home, seconds, max_ops = sys.argv[1], sys.argv[2], sys.argv[3], \\
        float(sys.argv[4]), int(sys.argv[5])
    shared = sys.argv[6].split(",")
    rng = random.Random(tag)
    acks = {{"added": [], "updated": [], "conflicts": 0, "searches": 0}}
    with MemOS(Settings.load(home), vault=PostgresVault(url, pool_size=3),
               embedder=HashEmbedder()) as mos:
        mine = []
        deadline = time.monotonic() + seconds
        for op in range(max_ops):
            if time.monotonic() > deadline:
                break
            roll = rng.random()
            if roll < 0.4 or not mine:
                [item] = mos.add("c", f"worker {{tag}} note {{op}} about gardening")
                mine.append(item.id)
                acks["added"].append([item.id, item.text])
            elif roll < 0.8:
                target = rng.choice(shared + mine)
                text = f"{{target}} rewritten by {{tag}} at {{op}}"
                try:
                    item = mos.update(target, text=text)
                except ConflictError:
                    acks["conflicts"] += 1
                    continue
                acks["updated"].append([item.id, item.version, text])
            else:
                assert mos.search("gardening note", "c", top_k=5)
                acks["searches"] += 1
    print(json.dumps(acks))
""")


def test_worker_processes_never_lose_or_duplicate_a_write(pg_url: str, home: Path) -> None:
    from memosys.infra.vault.base import ItemFilter as Flt

    vault = PostgresVault(pg_url)
    cube = vault.create_cube(MemCube(name="c", config=CubeConfig(embedder_id="test-hash",
                                                               embedding_dim=64)))
    shared = vault.commit(cube.id, [
        Write(make_item(cube, f"shared memory {i}"), "add", None, unit_vectors(1, 64, i)[0])
        for i in range(3)])
    script = _WORKER.format(src=_SRC)
    procs = [subprocess.Popen(
        [sys.executable, "-c", script, tag, pg_url, str(home), "8", "400",
         ",".join(s.id for s in shared)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in "ABCD"]
    acks = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        acks.append(json.loads(stdout))
    added = [a for w in acks for a in w["added"]]
    updated = [u for w in acks for u in w["updated"]]
    assert len(added) > 20 and len(updated) > 20 and all(w["searches"] for w in acks)

    items = {i.id: i for i in vault.list_items(Flt(cube_ids=(cube.id,)), limit=10_000)}
    # every acknowledged add is there exactly once, no write appeared twice
    assert len(items) == 3 + len(added)
    assert all(item_id in items for item_id, _ in added)
    assert vault.count(Flt(cube_ids=(cube.id,), states=())) == len(items)
    # every item's history is 1..n without a gap, one version per acknowledged write
    updates_per_item: dict[str, list[tuple[int, str]]] = {}
    for item_id, version, text in updated:
        updates_per_item.setdefault(item_id, []).append((version, text))
    for item_id, item in items.items():
        history = vault.history(item_id)
        assert [r.item.version for r in history] == list(range(1, len(history) + 1))
        acked = updates_per_item.get(item_id, [])
        assert len(history) == 1 + len(acked) == item.version
        texts = {r.item.version: r.item.text for r in history}
        assert all(texts[v] == t for v, t in acked)
    # one clock tick per acknowledged commit, none for the rolled-back ones
    assert vault.get_cube(cube.id).clock == 1 + len(added) + len(updated)
    vault.close()


# --- db copy -------------------------------------------------------------------------------
def _populated_sqlite_home(home: Path, embedder) -> str:
    with MemOS(Settings.load(home), embedder=embedder) as mos:
        mos.create_cube("travel")
        mos.create_cube("work", description="second cube")
        items = mos.add("travel", messages=[
            {"role": "user", "name": "Bo", "content": f"I visited city number {i} in May."}
            for i in range(30)], user="bo", session="s1")
        mos.add("work", "Quarterly review moved to Friday", tags=["calendar", "q3"])
        snap = mos.snapshot("travel", "before")
        mos.update(items[0].id, text="I visited Oslo in May, not Bergen.")
        mos.update(items[0].id, tags=["norway"])
        mos.delete(items[1].id)
        mos.rollback_cube("travel", snap)
        mos.search("which city in May?", "travel", top_k=5)  # access statistics
        mos.feedback(items[2].id, -1.5)
        mos.purge([items[3].id])
        mos.vault.enqueue_job("extract", {"episodes": [items[4].id]})
    return f"sqlite:///{home / 'memosys.db'}"


def test_db_copy_round_trip_sqlite_postgres_sqlite(home: Path, tmp_path: Path,
                                                    embedder) -> None:
    source = _populated_sqlite_home(home, embedder)
    pg_url = PG.new_database(migrated=False)  # the copy migrates an empty database itself
    result = CliRunner().invoke(app, ["db", "copy", "--from", source, "--to", pg_url])
    assert result.exit_code == 0, result.output
    assert "verification" in result.output and "NO" not in result.output
    back = f"sqlite:///{tmp_path / 'back' / 'memosys.db'}"
    checks = copy_database(pg_url, back)
    assert all(c.ok for c in checks), checks
    assert {c.table: c.source_rows for c in checks}["item_versions"] > 30
    first, second = verify(source, pg_url), verify(source, back)
    assert [c.source_checksum for c in first] == [c.target_checksum for c in second]
    assert all(c.ok for c in first + second)

    with pytest.raises(ConflictError, match="--force"):
        copy_database(source, pg_url)
    result = CliRunner().invoke(app, ["db", "copy", "--from", source, "--to", pg_url,
                                      "--force", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] is True

    # the copy is a working installation: same answers, same history, same clock
    with MemOS(Settings.load(home), embedder=embedder) as original, MemOS(
        Settings.load(home), vault=PostgresVault(pg_url), embedder=embedder
    ) as copied:
        query = "Oslo in May"
        assert [h.item.id for h in copied.search(query, "travel", top_k=3,
                                                 record_access=False)] == [
            h.item.id for h in original.search(query, "travel", top_k=3, record_access=False)]
        item = original.list("travel", limit=1)[0]
        assert [(r.item.version, r.clock, r.op) for r in copied.history(item.id)] == [
            (r.item.version, r.clock, r.op) for r in original.history(item.id)]
        assert copied.get_cube("travel").clock == original.get_cube("travel").clock
        assert copied.snapshots("travel")[0].clock == original.snapshots("travel")[0].clock
        new = copied.add("travel", "after the copy")[0]
        assert new.version == 1 and copied.get_cube("travel").clock == (
            original.get_cube("travel").clock + 1)


def test_vectors_survive_the_copy_bit_for_bit(pg_url: str, tmp_path: Path) -> None:
    vault = PostgresVault(pg_url)
    cube = vault.create_cube(make_cube())
    vecs = unit_vectors(5, seed=8) * np.float32(3.7)  # not normalised, odd values
    vault.commit(cube.id, [Write(make_item(cube, f"v{i}"), "add", None, v)
                           for i, v in enumerate(vecs)])
    vault.close()
    target = f"sqlite:///{tmp_path / 'v.db'}"
    assert all(c.ok for c in copy_database(pg_url, target))
    stored = [np.frombuffer(b, dtype=np.float32) for (b,) in _sqlite_rows(
        tmp_path / "v.db", "SELECT vec FROM vectors ORDER BY item_rowid")]
    assert np.array_equal(np.vstack(stored), vecs.astype(np.float32))


def _sqlite_rows(path: Path, query: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def test_search_bench_runs_on_postgres(tmp_path: Path, embedder,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from memosys.bench.search import run_search_bench

    monkeypatch.delenv("MEMOSYS_DATABASE_URL", raising=False)
    monkeypatch.setenv("MEMOSYS_HOME", str(tmp_path))
    printed = io.StringIO()
    rows = run_search_bench(20, 2, None, Console(file=printed, width=120),
                            data=tmp_path / "absent.json", backend="postgres")
    assert [r["n"] for r in rows] == [20] and rows[0]["vector_recall@10"] == 1.0
    assert "bench search on postgres" in printed.getvalue()
