"""The audit log through the runtime: every operation (reads included) is recorded with
actor, item ids and versions; the chain verifies; tampering is found; purge leaves a
content-free proof of deletion and no text anywhere."""

from __future__ import annotations

import json

import pytest

from conftest import BACKENDS
from memosys.config import Settings
from memosys.errors import NotFoundError, PermissionDeniedError
from memosys.infra.vault.sqlite import SQLiteVault
from memosys.system import MemOS
from test_governance_store import _tamper

SECRET_TEXT = "Zephyrine's safe combination is 31-07-55 behind the painting"


@pytest.fixture(params=sorted(BACKENDS))
def mos(request: pytest.FixtureRequest, home, tmp_path, embedder):
    runtime = MemOS(Settings.load(home), vault=BACKENDS[request.param](tmp_path),
                    embedder=embedder)
    yield runtime
    runtime.close()


def test_every_operation_is_audited_with_ids_and_versions(mos: MemOS) -> None:
    mos.create_user("ann", role="owner")
    mos.create_user("ben", role="owner")
    ann = mos.as_actor(mos.authenticate(mos.create_api_key("ann", agent="notes-bot")[1]))
    ben = mos.as_actor(mos.authenticate(mos.create_api_key("ben")[1]))
    ann.create_cube("ann-cube")
    [item] = ann.add("ann-cube", "Ann waters the ferns on Sundays")
    ann.search("ferns", ["ann-cube"])
    ann.get(item.id)
    ann.update(item.id, text="Ann waters the ferns on Saturdays")
    with pytest.raises(NotFoundError):
        ben.get(item.id)
    ann.share_cube("ann-cube", "ben", ["read"])
    with pytest.raises(PermissionDeniedError):
        ben.delete(item.id)
    ann.record_audit("chat.answer", items=[(item.id, 2)], detail={"session": "s1"})
    log = list(reversed(mos.audit_log(cube=None, limit=100)))
    ops = [(e.actor, e.op, e.outcome) for e in log if e.actor in ("ann", "ben")]
    assert ops == [
        ("ann", "create_cube", "ok"), ("ann", "add", "ok"), ("ann", "search", "ok"),
        ("ann", "get", "ok"), ("ann", "update", "ok"), ("ben", "get", "not_found"),
        ("ann", "share_cube", "ok"), ("ben", "delete", "denied"), ("ann", "chat.answer", "ok"),
    ]
    by_op = {e.op: e for e in log if e.actor == "ann"}
    assert by_op["search"].items == ((item.id, 1),)
    assert by_op["update"].items == ((item.id, 2),)
    assert by_op["add"].agent == "notes-bot" and by_op["add"].key_id is not None
    assert [e.op for e in mos.audit_log(item_id=item.id, newest_first=False)][:2] == [
        "add", "search"]
    # a user sees only their own entries
    assert {e.actor for e in ann.audit_log()} == {"ann"}
    assert mos.verify_audit().ok


def test_tampered_row_is_detected(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", "the audit must notice edits")
    mos.get(item.id)
    assert mos.verify_audit().ok
    _tamper(mos.vault, "UPDATE gov_audit SET op = 'noop' WHERE op = 'get'")
    result = mos.verify_audit()
    assert not result.ok and result.first_bad_seq is not None


def test_purge_leaves_content_free_proof_and_no_text(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", SECRET_TEXT)
    mos.update(item.id, text=SECRET_TEXT + " (moved)")
    mos.search("safe combination painting", ["c"])
    mos.lifecycle.flag_for_review(item.id, "feedback", "check it")
    assert mos.purge([item.id]) == 1
    with pytest.raises(NotFoundError):
        mos.get(item.id)
    [proof] = [e for e in mos.audit_log(item_id=item.id) if e.op == "purge"]
    assert proof.items == ((item.id, 2),) and proof.detail == {"versions_erased": 2}
    everything = json.dumps([e.as_dict() for e in mos.audit_log(limit=10_000)])
    assert "Zephyrine" not in everything and "combination" not in everything
    assert mos.lifecycle.review_queue("c") == []
    assert mos.verify_audit().ok
    assert not _stored_anywhere(mos, "Zephyrine")


def _stored_anywhere(mos: MemOS, needle: str) -> bool:
    vault = mos.vault
    if isinstance(vault, SQLiteVault):
        vault._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = b"".join(p.read_bytes() for p in vault.path.parent.glob(vault.path.name + "*"))
        return needle.encode() in data
    with vault.connection() as conn:  # type: ignore[attr-defined]
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE'")]
        return any(conn.execute(f'SELECT count(*) FROM "{t}" x WHERE x::text LIKE %s',
                                (f"%{needle}%",)).fetchone()[0] for t in tables)
