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
    conn.execute("INSERT INTO items_fts(items_fts) VALUES ('integrity-check')")
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
        "1",)
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
