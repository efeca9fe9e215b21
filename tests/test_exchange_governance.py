"""Exports and imports honour ACLs, private memories and the sensitive-data policy."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from exchange_helpers import state
from memosys.config import Settings
from memosys.errors import NotFoundError, PermissionDeniedError
from memosys.infra.exchange import export_cube, import_archive, read_archive
from memosys.models.embed import Embedder
from memosys.system import MemOS

EMAIL = "alice.smith@example.com"


@pytest.fixture
def target(tmp_path: Path, embedder: Embedder) -> Iterator[MemOS]:
    runtime = MemOS(Settings.load(tmp_path / "target"), embedder=embedder)
    yield runtime
    runtime.close()


def _texts(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return (z.read("memories.jsonl") + z.read("versions.jsonl")).decode()


def test_export_redacts_sensitive_data_by_default(
    mos: MemOS, target: MemOS, tmp_path: Path, embedder: Embedder
) -> None:
    mos.create_cube("crm")
    [item] = mos.add("crm", f"Reach Alice at {EMAIL} about the invoice")
    mos.update(item.id, text=f"Reach Alice at {EMAIL} about the overdue invoice")
    mos.add("crm", "Alice prefers calls in the morning")
    assert mos.get(item.id).sensitivity == ["email"]
    report = export_cube(mos, "crm", tmp_path / "crm.mip")
    assert report.redacted == 1
    assert EMAIL not in _texts(tmp_path / "crm.mip")
    parsed = read_archive(tmp_path / "crm.mip")
    assert parsed.manifest["redaction"] == {"applied": True, "policy": "all-sensitive",
                                            "redacted_memories": 1}
    row = next(i for i, m in enumerate(parsed.memories) if m.id == item.id)
    redacted_text = parsed.memories[row].text
    assert "[EMAIL]" in redacted_text
    # the vector embeds the redacted text, so it does not carry the address either
    assert np.allclose(parsed.vectors[row], embedder.embed([redacted_text])[0], atol=1e-5)
    import_archive(target, tmp_path / "crm.mip", keep_ids=True)
    assert [r.item.text for r in target.history(item.id)] == [
        "Reach Alice at [EMAIL] about the invoice",
        "Reach Alice at [EMAIL] about the overdue invoice"]
    # the local admin may take it out unredacted, deliberately
    export_cube(mos, "crm", tmp_path / "full.mip", redact=False)
    assert EMAIL in _texts(tmp_path / "full.mip")


def test_export_as_another_user_honours_acls(mos: MemOS, tmp_path: Path) -> None:
    mos.create_user("alice", role="owner")
    mos.create_user("bob", role="member")
    mos.create_user("carol", role="member")
    alice = mos.as_actor(mos.authenticate(mos.create_api_key("alice")[1]))
    bob = mos.as_actor(mos.authenticate(mos.create_api_key("bob", scopes=["read"])[1]))
    carol = mos.as_actor(mos.authenticate(mos.create_api_key("carol")[1]))
    alice.create_cube("shared")
    alice.add("shared", "Team lunch is on Friday")
    alice.add("shared", "Alice's private reminder", visibility="private")
    alice.share_cube("shared", "bob", ["read"])
    report = export_cube(bob, "shared", tmp_path / "bob.mip")
    assert report.memories == 1 and "private reminder" not in _texts(tmp_path / "bob.mip")
    assert export_cube(alice, "shared", tmp_path / "alice.mip").memories == 2
    with pytest.raises(NotFoundError):
        export_cube(carol, "shared", tmp_path / "carol.mip")
    with pytest.raises(PermissionDeniedError, match="sensitive"):
        export_cube(bob, "shared", tmp_path / "x.mip", redact=False)
    assert not (tmp_path / "carol.mip").exists() and not (tmp_path / "x.mip").exists()
    entries = [e for e in mos.audit_log(cube="shared") if e.op == "export"]
    assert {e.actor for e in entries} == {"alice", "bob"}


def test_import_needs_write_access(mos: MemOS, target: MemOS, tmp_path: Path) -> None:
    mos.create_cube("notes")
    mos.add("notes", "Something worth keeping")
    export_cube(mos, "notes", tmp_path / "notes.mip")
    target.create_user("dave", role="member")
    target.create_user("rita", role="reader")
    target.create_cube("notes")
    target.share_cube("notes", "dave", ["read"])
    dave = target.as_actor(target.authenticate(target.create_api_key("dave")[1]))
    rita = target.as_actor(target.authenticate(target.create_api_key("rita")[1]))
    before = state(target)
    with pytest.raises(PermissionDeniedError):
        import_archive(dave, tmp_path / "notes.mip", on_conflict="merge")
    with pytest.raises(PermissionDeniedError):
        import_archive(rita, tmp_path / "notes.mip", name="ritas")
    assert state(target) == before
    report = import_archive(dave, tmp_path / "notes.mip", name="daves")
    assert target.vault.get_cube("daves").owner == "dave" and report.memories_added == 1
