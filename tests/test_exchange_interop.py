"""Interop: mem0 exports and plain JSONL/CSV in; readable JSONL out; the CLI commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exchange_helpers import fill_source, state
from memosys.errors import ConflictError, ValidationError
from memosys.infra.exchange_interop import export_plain_jsonl, import_file
from memosys.system import MemOS

# The shape of mem0's `Memory.get_all()` / platform `get_all` result (v1.1 output format).
MEM0_EXPORT = {
    "results": [
        {
            "id": "892db2ae-06d9-49e5-8b3e-585ef9b85b8e",
            "memory": "Is a vegetarian and allergic to nuts",
            "hash": "5d46e3b2cf2b3c5f5e2f4f3a9b3ad3b1",
            "metadata": {"source": "onboarding"},
            "categories": ["food", "health"],
            "created_at": "2024-07-25T23:57:00.108347-07:00",
            "updated_at": "2024-07-26T10:01:12.000000-07:00",
            "user_id": "alex",
            "agent_id": "diet-assistant",
            "run_id": "run-7",
            "role": "user",
        },
        {
            "id": "a1b2c3d4-0000-4000-8000-000000000002",
            "memory": "Prefers morning meetings",
            "hash": "ffff",
            "metadata": None,
            "created_at": "2024-08-01T09:00:00Z",
            "updated_at": None,
            "user_id": "alex",
            "expiration_date": "2030-01-01",
            "immutable": False,
        },
    ]
}


def test_mem0_export_import(mos: MemOS, tmp_path: Path) -> None:
    path = tmp_path / "mem0.json"
    path.write_text(json.dumps(MEM0_EXPORT))
    report = import_file(mos, path, source="mem0", name="alex")
    assert (report.action, report.memories_added) == ("created", 2)
    items = {i.text: i for i in mos.list("alex")}
    veg = items["Is a vegetarian and allergic to nuts"]
    assert (veg.source.user, veg.source.agent, veg.source.session, veg.source.role) == (
        "alex", "diet-assistant", "run-7", "user")
    assert veg.owner == "alex" and veg.tags == ["food", "health"]
    assert veg.metadata["mem0_id"] == "892db2ae-06d9-49e5-8b3e-585ef9b85b8e"
    assert veg.metadata["mem0_hash"] == "5d46e3b2cf2b3c5f5e2f4f3a9b3ad3b1"
    assert veg.metadata["source"] == "onboarding"
    assert veg.created_at == datetime(2024, 7, 26, 6, 57, 0, 108347, tzinfo=UTC)
    meet = items["Prefers morning meetings"]
    assert meet.valid_to == datetime(2030, 1, 1, tzinfo=UTC)
    assert meet.metadata["mem0_immutable"] is False
    assert mos.search("nut allergy", "alex", top_k=1)[0].item.id == veg.id
    # the plain list form, imported again into the same cube: nothing twice
    path.write_text(json.dumps(MEM0_EXPORT["results"]))
    again = import_file(mos, path, source="mem0", name="alex", on_conflict="merge")
    assert (again.memories_added, again.memories_unchanged) == (0, 2)


def test_jsonl_and_csv_import(mos: MemOS, tmp_path: Path) -> None:
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text("\n".join([
        json.dumps("Just a plain text line"),
        json.dumps({"text": "Bob plays the cello", "type": "fact", "tags": "music;bob",
                    "user": "bob", "created_at": "2023-03-04", "mood": "happy"}),
        "",
        json.dumps({"content": "Meeting moved to Friday", "valid_from": "2024-05-01T10:00"}),
    ]) + "\n")
    report = import_file(mos, jsonl, source="jsonl", name="plain")
    assert report.memories_added == 3
    cello = next(i for i in mos.list("plain") if "cello" in i.text)
    assert cello.tags == ["music", "bob"] and cello.source.user == "bob"
    assert cello.metadata == {"mood": "happy"}
    assert cello.created_at == datetime(2023, 3, 4, tzinfo=UTC)
    csv_path = tmp_path / "notes.csv"
    csv_path.write_text('text,tags,user,metadata\n"Carol, the baker, likes rye",food,carol,'
                        '"{""k"": 1}"\nSecond row,,,\n')
    report = import_file(mos, csv_path, source="csv", name="fromcsv")
    assert report.memories_added == 2
    carol = next(i for i in mos.list("fromcsv") if "Carol" in i.text)
    assert carol.text == "Carol, the baker, likes rye" and carol.metadata == {"k": 1}


def test_bad_interop_input_writes_nothing(mos: MemOS, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "x",
                                                                     "type": "nonsense"}))
    before = state(mos)
    with pytest.raises(ValidationError, match="line 2"):
        import_file(mos, bad, source="jsonl", name="plain")
    bad.write_text("{not json")
    with pytest.raises(ValidationError, match="line 1"):
        import_file(mos, bad, source="jsonl", name="plain")
    with pytest.raises(ValidationError, match="mem0"):
        bad.write_text('{"nothing": 1}')
        import_file(mos, bad, source="mem0", name="plain")
    with pytest.raises(ValidationError, match="text"):
        bad.write_text("a,b\n1,2\n")
        import_file(mos, bad, source="csv", name="plain")
    assert state(mos) == before
    mos.create_cube("taken")
    bad.write_text(json.dumps("hello") + "\n")
    with pytest.raises(ConflictError):
        import_file(mos, bad, source="jsonl", name="taken")


def test_plain_jsonl_export_is_readable_and_reads_back(mos: MemOS, tmp_path: Path) -> None:
    ids = fill_source(mos)
    out = tmp_path / "notes.jsonl"
    assert export_plain_jsonl(mos, "notes", out) == 3  # active memories only
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tea = next(r for r in rows if r["id"] == ids["tea"])
    assert tea["text"] == "Alice likes jasmine tea" and tea["tags"] == ["drink", "favourite"]
    assert tea["type"] == "preference" and tea["user"] == "alice"
    report = import_file(mos, out, source="jsonl", name="back")
    assert report.memories_added == 3
    assert {i.text for i in mos.list("back")} == {r["text"] for r in rows}


def test_cli_export_import_verify_keygen(tmp_path: Path, embedder: object) -> None:
    from memosys.interface.cli import app

    runner = CliRunner()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert runner.invoke(app, ["add", "Dana keeps bees", "-c", "hive", "--home", a]).exit_code == 0
    keys = runner.invoke(app, ["keygen", "--home", a, "--json"])
    assert keys.exit_code == 0, keys.output
    pair = json.loads(keys.output)
    archive = str(tmp_path / "hive.mip")
    res = runner.invoke(app, ["export", "hive", archive, "--sign", pair["private_path"],
                              "--home", a, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["signed_by"] == pair["key_id"]
    res = runner.invoke(app, ["verify", archive, "--trust", pair["public_path"], "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["counts"]["memories"] == 1
    res = runner.invoke(app, ["import", archive, "--home", b, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["signed_by"] == pair["key_id"]
    res = runner.invoke(app, ["import", archive, "--home", b])
    assert res.exit_code == 4  # exists: the user must choose
    res = runner.invoke(app, ["import", archive, "--home", b, "--on-conflict", "skip"])
    assert res.exit_code == 0
    (tmp_path / "junk.mip").write_bytes(b"junk")
    res = runner.invoke(app, ["import", str(tmp_path / "junk.mip"), "--home", b])
    assert res.exit_code == 20
    res = runner.invoke(app, ["export", "hive", str(tmp_path / "h.jsonl"), "--format",
                              "jsonl", "--home", a])
    assert res.exit_code == 0 and "Dana keeps bees" in (tmp_path / "h.jsonl").read_text()
