"""What only the embedded SQLite backend promises: erased bytes and its file layout."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from helpers import make_cube, make_item, unit_vectors
from memosys.infra.vault.base import ItemFilter, Write
from memosys.infra.vault.sqlite import SQLiteVault

SECRET = "Zyxqvplugh"
SECRET_V2 = "Quarkblorft"


def _file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_purged_text_is_gone_from_the_database_files(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    vault = SQLiteVault(db)
    cube = vault.create_cube(make_cube())
    filler = [Write(make_item(cube, f"ordinary memory number {i}"), "add", None, v)
              for i, v in enumerate(unit_vectors(50, seed=1))]
    vault.commit(cube.id, filler)
    secret = make_item(cube, f"my password hint is {SECRET}", tags=[SECRET.lower()])
    vault.commit(cube.id, [Write(secret, "add", None, unit_vectors(1, seed=2)[0])])
    vault.commit(cube.id, [Write(secret.model_copy(update={"text": f"hint {SECRET_V2}"}),
                                 "update", 1)])
    assert SECRET.encode() in _file_bytes(db)

    assert vault.purge([secret.id]) == 1
    data = _file_bytes(db)
    for word in (SECRET, SECRET_V2):
        assert word.encode() not in data
        assert word.lower().encode() not in data  # FTS terms are stored lower-cased
    assert vault.count(ItemFilter(cube_ids=(cube.id,))) == 50
    vault.close()

    # the file is still a healthy database with its FTS index intact
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (n,) = conn.execute("SELECT n FROM fts_tables WHERE cube_id = ?", (cube.id,)).fetchone()
    conn.execute(f"INSERT INTO fts_{n}(fts_{n}) VALUES ('integrity-check')")
    conn.close()
    reopened = SQLiteVault(db)
    assert len(reopened.search_text("ordinary", ItemFilter(cube_ids=(cube.id,)), 100)) == 50
    reopened.close()


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    SQLiteVault(db).close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        "2",)
    conn.close()


def test_ann_index_used_past_threshold_stays_correct(tmp_path: Path) -> None:
    vault = SQLiteVault(tmp_path / "vault.db", ann_threshold=200)
    cube = vault.create_cube(make_cube())
    vecs = unit_vectors(600, seed=5)
    items = vault.commit(cube.id, [Write(make_item(cube, f"m{i}"), "add", None, v)
                                   for i, v in enumerate(vecs)])
    flt = ItemFilter(cube_ids=(cube.id,))
    assert vault.search_vector(vecs[123], flt, 1)[0][0] == items[123].id
    assert vault._vectors[cube.id].index.uses_ann  # noqa: SLF001 - the point of the test
    vault.purge([items[123].id])
    assert vault.search_vector(vecs[123], flt, 1)[0][0] != items[123].id
    vault.close()


def test_a_version_1_file_gets_an_index_per_cube_and_searches_as_before(tmp_path: Path) -> None:
    """Schema 1 kept one FTS5 table for every cube; opening such a file moves each cube's
    rows into its own index, once, and every search still finds what it found."""
    db = tmp_path / "vault.db"
    vault = SQLiteVault(db)
    cubes = [vault.create_cube(make_cube(name)) for name in ("a", "b")]
    for n, cube in enumerate(cubes):
        vault.commit(cube.id, [Write(make_item(cube, f"{word} note from cube {cube.name}"),
                                     "add", None, v)
                               for word, v in zip(("apple", "pear", "plum"),
                                                  unit_vectors(3, seed=n), strict=True)])
    vault.close()
    # rewrite the file into schema 1's layout
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE VIRTUAL TABLE items_fts USING fts5(text, tags, "
                 "tokenize = 'porter unicode61 remove_diacritics 2')")
    for (n,) in conn.execute("SELECT n FROM fts_tables").fetchall():
        conn.execute(f"INSERT INTO items_fts (rowid, text, tags) SELECT rowid, text, tags "
                     f"FROM fts_{n}")
        conn.execute(f"DROP TABLE fts_{n}")
    conn.execute("DROP TABLE fts_tables")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()

    reopened = SQLiteVault(db)
    for cube in cubes:
        hits = reopened.search_text("pear cube", ItemFilter(cube_ids=(cube.id,)), 10)
        texts = [reopened.get_many([i])[i].text for i, _ in hits]
        assert texts[0] == f"pear note from cube {cube.name}" and len(texts) == 3
    reopened.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        "2",)
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'items_fts'").fetchone() is None
    assert conn.execute("SELECT count(*) FROM fts_tables").fetchone() == (2,)
    conn.close()
