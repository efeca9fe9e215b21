"""The `memosys` command: JSON output a script can parse and stable exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memosys.interface.cli import app

runner = CliRunner()


@pytest.fixture
def cli(home: Path, embedder):  # embedder: load MiniLM once per session, not per command
    def run(*args: str, code: int = 0, stdin: str | None = None):
        result = runner.invoke(app, [*args, "--home", str(home)], input=stdin)
        assert result.exit_code == code, result.output + str(result.exception or "")
        return result

    return run


def _json(result) -> object:
    return json.loads(result.stdout)


def test_cli_round_trip(cli, tmp_path: Path) -> None:
    cli("cubes", "create", "alice", "--owner", "alice")
    assert [c["name"] for c in _json(cli("cubes", "list", "--json"))] == ["alice"]
    [item] = _json(cli("add", "Alice prefers tea over coffee", "-c", "alice", "--type",
                       "preference", "--tag", "food", "--json"))
    assert item["memory_type"] == "preference" and item["tags"] == ["food"]
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "name": "Alice", "content": "I live in Oslo",
                                 "id": "m1"}]))
    [episode] = _json(cli("add", "--messages", str(chat), "-c", "alice", "--session", "s1",
                          "--json"))
    assert episode["source"]["message_ids"] == ["m1"]
    cli("add", "-", "-c", "alice", stdin="piped text memory\n")

    hits = _json(cli("search", "where does Alice live", "-c", "alice", "-k", "2", "--json"))
    assert hits[0]["item"]["id"] == episode["id"]
    assert hits[0]["provenance"]["session"] == "s1"
    assert "ranks" in hits[0] and hits[0]["score"] > 0
    filtered = _json(cli("search", "drink", "--type", "preference", "--json"))
    assert [h["item"]["id"] for h in filtered] == [item["id"]]

    updated = _json(cli("update", item["id"], "--text", "Alice prefers green tea", "--json"))
    assert updated["version"] == 2
    assert [v["version"] for v in _json(cli("history", item["id"], "--json"))] == [1, 2]
    assert _json(cli("rollback", item["id"], "1", "--json"))["text"] == (
        "Alice prefers tea over coffee")
    assert _json(cli("get", item["id"], "--json"))["version"] == 3

    snap = _json(cli("snapshot", "-c", "alice", "--json"))
    assert _json(cli("delete", episode["id"], "--json"))["state"] == "deleted"
    restored = _json(cli("rollback-cube", str(snap["clock"]), "-c", "alice", "--json"))
    assert [r["state"] for r in restored] == ["active"]
    assert _json(cli("purge", episode["id"], "--yes", "--json")) == {"purged": 1}
    stats = _json(cli("stats", "--json"))["cubes"][0]
    assert stats["items"] == 2 and stats["by_type"] == {"fact": 1, "preference": 1}
    assert "alice" in cli("stats").stdout


def test_cli_errors_have_stable_exit_codes(cli) -> None:
    cli("cubes", "create", "c")
    assert "not_found" in cli("get", "nope", code=3).output
    assert "invalid_input" in cli("add", "  ", "-c", "c", code=2).output
    cli("add", "x", "-c", "c", "--type", "gossip", code=2)
    cli("search", "x", "--since", "last tuesday", code=2)
    cli("cubes", "create", "c", code=4)
    cli("rollback", "nope", "1", code=3)


def test_cli_as_a_subprocess(home: Path) -> None:
    """The installed entry point, as a script would call it."""
    cmd = [sys.executable, "-m", "memosys", "get", "missing-id", "--home", str(home)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert "no memory 'missing-id'" in proc.stderr
    assert proc.stdout == ""
