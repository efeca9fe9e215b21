"""Governance through the `memosys` command: keys in $MEMOSYS_API_KEY, tenant isolation,
revocation, sharing, audit verify, lifecycle and review commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memosys.interface.cli import app
from memosys.interface.cli_common import API_KEY_ENV

runner = CliRunner()


@pytest.fixture
def cli(home: Path, embedder, monkeypatch: pytest.MonkeyPatch):
    def run(*args: str, key: str | None = None, code: int = 0):
        if key is None:
            monkeypatch.delenv(API_KEY_ENV, raising=False)
        else:
            monkeypatch.setenv(API_KEY_ENV, key)
        result = runner.invoke(app, [*args, "--home", str(home)])
        assert result.exit_code == code, result.output + str(result.exception or "")
        return result

    return run


def _json(result) -> object:
    return json.loads(result.stdout)


def _key(cli, user: str, *scopes: str) -> tuple[str, str]:
    extra = [a for s in scopes for a in ("--scope", s)]
    data = _json(cli("keys", "create", user, *extra, "--json"))
    return data["id"], data["secret"]


def test_user_b_cannot_reach_user_a_memories_from_the_cli(cli) -> None:
    cli("users", "create", "alice", "--role", "owner")
    cli("users", "create", "bob", "--role", "owner")
    _, ka = _key(cli, "alice")
    kb_id, kb = _key(cli, "bob")
    cli("cubes", "create", "alice-cube", key=ka)
    [item] = _json(cli("add", "Alice hides the spare key under the blue pot", "-c",
                       "alice-cube", "--json", key=ka))
    assert item["owner"] == "alice"
    for args in (("get", item["id"]), ("history", item["id"]),
                 ("update", item["id"], "--text", "x"), ("delete", item["id"]),
                 ("purge", item["id"], "--yes"), ("rollback", item["id"], "1"),
                 ("feedback", item["id"], "wrong"), ("search", "spare key", "-c", "alice-cube"),
                 ("stats", "-c", "alice-cube"), ("graph", "entities", "-c", "alice-cube")):
        result = cli(*args, key=kb, code=3)
        assert "spare key" not in result.output
    hits = _json(cli("search", "spare key blue pot", "--json", key=kb))
    assert hits == []
    assert [c["name"] for c in _json(cli("cubes", "list", "--json", key=kb))] == []
    # read-only share: search works, update is refused (403 -> exit 10)
    cli("share", "alice-cube", "bob", "--perm", "read", key=ka)
    hits = _json(cli("search", "spare key", "-c", "alice-cube", "--json", key=kb))
    assert hits[0]["item"]["id"] == item["id"]
    cli("update", item["id"], "--text", "moved", key=kb, code=10)
    # revoked keys stop at once
    cli("keys", "revoke", kb_id)
    cli("search", "spare key", "-c", "alice-cube", key=kb, code=9)
    cli("get", item["id"], key="msk_0000000000000000_not-a-real-secret-at-all", code=9)
    # users and keys are the admin's
    cli("users", "create", "mallory", "--role", "admin", key=ka, code=10)


def test_audit_verify_and_list_from_the_cli(cli, home: Path) -> None:
    cli("cubes", "create", "c")
    [item] = _json(cli("add", "audited from the shell", "-c", "c", "--json"))
    cli("get", item["id"])
    entries = _json(cli("audit", "list", "--item", item["id"], "--json"))
    assert [e["op"] for e in entries] == ["get", "add"]
    assert _json(cli("audit", "verify", "--json"))["ok"] is True
    import sqlite3

    conn = sqlite3.connect(home / "memosys.db")
    conn.execute("DROP TRIGGER gov_audit_no_update")
    conn.execute("UPDATE gov_audit SET actor = 'someone-else' WHERE op = 'get'")
    conn.commit()
    conn.close()
    result = cli("audit", "verify", code=1)
    assert "TAMPERED" in result.output


def test_policy_lifecycle_and_review_commands(cli) -> None:
    cli("cubes", "create", "c")
    policy = _json(cli("policy", "set", "c", "--pii", "redact", "--ttl", "episode=60"))
    assert policy["pii"] == "redact" and policy["ttl"] == {"episode": 60.0}
    [item] = _json(cli("add", "the boat leaves at noon", "-c", "c", "--json"))
    cli("lifecycle", "freeze", item["id"])
    cli("lifecycle", "restore", item["id"])
    cli("feedback", item["id"], "wrong", "--note", "it leaves at one")
    [entry] = _json(cli("review", "list", "-c", "c", "--json"))
    assert entry["item_id"] == item["id"] and entry["kind"] == "feedback"
    cli("review", "reject", entry["id"])
    report = _json(cli("lifecycle", "run", "-c", "c", "--json"))
    assert report["transitions"] == []
    assert _json(cli("get", item["id"], "--json"))["state"] == "active"


def test_bench_governance_prints_and_writes_json(tmp_path: Path, embedder) -> None:
    target = tmp_path / "gov.json"
    result = runner.invoke(app, ["bench", "governance", "--n", "40", "--queries", "4",
                                 "--json", str(target)])
    assert result.exit_code == 0, result.output
    data = json.loads(target.read_text())
    assert data["memories"] == 40 and data["search_user_ms"] > 0
    assert "x baseline" in result.output
