"""The governance storage contract (users, keys, ACLs, audit chain, policies, reviews),
written against `Vault.governance` only and run on every backend."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from memosys.errors import ConflictError, NotFoundError
from memosys.infra.governance import (
    ApiKey,
    Grant,
    NewAuditEntry,
    ReviewEntry,
    new_key,
    verify_chain,
)
from memosys.infra.vault.base import Vault

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_users_keys_and_grants(vault: Vault) -> None:
    gov = vault.governance
    gov.create_user("alice", "owner")
    with pytest.raises(ConflictError):
        gov.create_user("alice", "member")
    assert gov.get_user("alice").role == "owner"
    assert gov.set_role("alice", "member").role == "member"
    with pytest.raises(NotFoundError):
        gov.get_user("nobody")
    key_id, secret, digest = new_key()
    gov.add_key(ApiKey(key_id, "alice", frozenset({"read"}), "bot", NOW, None, digest))
    stored = gov.get_key(key_id)
    assert (stored.user_id, stored.scopes, stored.agent, stored.active) == (
        "alice", frozenset({"read"}), "bot", True)
    assert stored.secret_hash == digest != secret
    assert not gov.revoke_key(key_id).active
    assert [k.id for k in gov.list_keys("alice")] == [key_id]
    gov.grant(Grant("cube-1", "alice", frozenset({"read", "write"}), "admin", NOW))
    gov.grant(Grant("cube-1", "alice", frozenset({"read"}), "admin", NOW))  # replaces
    assert gov.grants_for_user("alice") == {"cube-1": frozenset({"read"})}
    assert [g.user_id for g in gov.grants_for_cube("cube-1")] == ["alice"]
    assert gov.revoke_grant("cube-1", "alice") and not gov.revoke_grant("cube-1", "alice")
    gov.grant(Grant("cube-2", "alice", frozenset({"read"}), "admin", NOW))
    key2, _, digest2 = new_key()
    gov.add_key(ApiKey(key2, "alice", frozenset({"read"}), None, NOW, None, digest2))
    gov.delete_user("alice")
    assert not gov.get_key(key2).active and gov.grants_for_user("alice") == {}


def _entries(n: int, actor: str = "alice") -> list[NewAuditEntry]:
    return [NewAuditEntry(actor, "search", cube_id="c1", items=((f"id-{i}", i + 1),),
                          detail={"top_k": 10, "nested": {"b": [1, 2]}}) for i in range(n)]


def test_audit_chain_appends_filters_and_verifies(vault: Vault) -> None:
    gov = vault.governance
    first = gov.append_audit(_entries(3))
    second = gov.append_audit([NewAuditEntry("bob", "get", items=(("id-1", 2),))])
    assert [e.seq for e in first + second] == [1, 2, 3, 4]
    assert second[0].prev_hash == first[-1].hash
    stored = gov.audit_entries()
    assert stored == first + second  # read back exactly as hashed
    assert verify_chain(stored).ok and verify_chain(stored).head == second[0].hash
    assert [e.seq for e in gov.audit_entries(actor="bob")] == [4]
    assert [e.seq for e in gov.audit_entries(item_id="id-1")] == [2, 4]
    assert [e.seq for e in gov.audit_entries(newest_first=True, limit=2)] == [4, 3]
    assert [e.seq for e in gov.audit_entries(after_seq=2, cube_id="c1")] == [3]


def test_audit_is_append_only_and_tampering_is_detected(vault: Vault) -> None:
    gov = vault.governance
    gov.append_audit(_entries(4))
    with pytest.raises(Exception, match="append-only"):
        _execute(vault, "UPDATE gov_audit SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(Exception, match="append-only"):
        _execute(vault, "DELETE FROM gov_audit WHERE seq = 4")
    # an attacker with direct access to the database removes the guard and edits a row
    _tamper(vault, "UPDATE gov_audit SET actor = 'mallory' WHERE seq = 2")
    result = verify_chain(gov.audit_entries())
    assert not result.ok and result.first_bad_seq == 2 and "modified" in result.reason


def test_removed_audit_row_is_detected(vault: Vault) -> None:
    gov = vault.governance
    gov.append_audit(_entries(4))
    _tamper(vault, "DELETE FROM gov_audit WHERE seq = 3")
    result = verify_chain(gov.audit_entries())
    assert not result.ok and result.first_bad_seq == 4 and "missing" in result.reason


def test_concurrent_appends_keep_one_valid_chain(vault: Vault) -> None:
    gov = vault.governance

    def work(who: str) -> None:
        for _ in range(10):
            gov.append_audit(_entries(2, who))

    threads = [threading.Thread(target=work, args=(f"u{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = gov.audit_entries()
    assert len(entries) == 80 and verify_chain(entries).ok


def test_policies_and_review_queue(vault: Vault) -> None:
    gov = vault.governance
    assert gov.get_policy("c1") == {}
    gov.set_policy("c1", {"pii": "redact", "ttl": {"episode": 60.0}})
    assert gov.get_policy("c1") == {"pii": "redact", "ttl": {"episode": 60.0}}
    entry = ReviewEntry("r1", "c1", "item-1", "contradiction", "why", ("old-1",), "open", NOW)
    assert gov.add_review(entry) == entry
    again = gov.add_review(ReviewEntry("r2", "c1", "item-1", "contradiction", "x", (),
                                       "open", NOW))
    assert again.id == "r1"  # one open entry per memory and kind
    assert [r.id for r in gov.list_reviews(["c1"])] == ["r1"]
    done = gov.resolve_review("r1", "rejected", "alice")
    assert (done.state, done.resolved_by) == ("rejected", "alice")
    with pytest.raises(ConflictError):
        gov.resolve_review("r1", "approved", "alice")
    with pytest.raises(NotFoundError):
        gov.resolve_review("nope", "approved", "alice")
    assert gov.list_reviews(["c1"]) == [] and len(gov.list_reviews(["c1"], state=None)) == 1
    gov.forget_items(["item-1"])
    assert gov.list_reviews(["c1"], state=None) == []


# --- direct database access, as an attacker or a test would have it ------------------------
def _execute(vault: Vault, statement: str) -> None:
    from memosys.infra.vault.sqlite import SQLiteVault

    if isinstance(vault, SQLiteVault):
        with vault._write() as conn:
            conn.execute(statement)
    else:
        with vault.connection() as conn:  # type: ignore[attr-defined]
            conn.execute(statement)


def _tamper(vault: Vault, statement: str) -> None:
    from memosys.infra.vault.sqlite import SQLiteVault

    if isinstance(vault, SQLiteVault):
        with vault._write() as conn:
            conn.execute("DROP TRIGGER gov_audit_no_update")
            conn.execute("DROP TRIGGER gov_audit_no_delete")
            conn.execute(statement)
    else:
        with vault.connection() as conn, conn.transaction():  # type: ignore[attr-defined]
            conn.execute("ALTER TABLE gov_audit DISABLE TRIGGER USER")
            conn.execute(statement)
