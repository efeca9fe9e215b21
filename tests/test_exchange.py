"""MIP cube archives: round trips, conflict modes, signatures, deltas, re-embedding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange_helpers import fill_source, manifest_of, rewrite, state
from memosys.config import Settings
from memosys.errors import ArchiveTamperedError, ConflictError
from memosys.infra.exchange import (
    export_cube,
    generate_keypair,
    import_archive,
    load_private_key,
    load_public_key,
    read_archive,
    validate_manifest,
)
from memosys.infra.exchange_import import remapped_id
from memosys.models.embed import Embedder
from memosys.system import MemOS

QUERIES = ["what does Alice drink", "where does Alice live", "pet cat", "note"]


@pytest.fixture
def target(tmp_path: Path, embedder: Embedder) -> Iterator[MemOS]:
    runtime = MemOS(Settings.load(tmp_path / "target"), embedder=embedder)
    yield runtime
    runtime.close()


def _search(mos: MemOS, cube: str) -> list[tuple[str, str, float]]:
    out = []
    for q in QUERIES:
        for hit in mos.search(q, cube, top_k=5, record_access=False,
                              filters={"states": []}):
            out.append((q, hit.item.id, round(hit.score, 5)))
    return out


def test_round_trip_into_a_fresh_home_is_identical(
    mos: MemOS, target: MemOS, tmp_path: Path
) -> None:
    fill_source(mos)
    report = export_cube(mos, "notes", tmp_path / "notes.mip")
    assert (report.memories, report.versions, report.embeddings) == (4, 7, 4)
    validate_manifest(manifest_of(tmp_path / "notes.mip"))  # the committed schema holds
    result = import_archive(target, tmp_path / "notes.mip", keep_ids=True)
    assert (result.action, result.memories_added, result.versions_added) == ("created", 4, 7)
    assert result.reembedded == 0
    assert state(target) == state(mos)  # cube header, items + stats, versions, vectors
    assert _search(target, "notes") == _search(mos, "notes")


def test_round_trip_with_new_ids_keeps_content_and_links(
    mos: MemOS, target: MemOS, tmp_path: Path
) -> None:
    ids = fill_source(mos)
    [derived] = mos.add("notes", "Alice drinks tea daily")
    mos.update(derived.id, metadata={"from": "x"})
    export_cube(mos, "notes", tmp_path / "notes.mip")
    result = import_archive(target, tmp_path / "notes.mip", name="copy")
    cube = target.vault.get_cube("copy")
    assert cube.id != mos.vault.get_cube("notes").id and result.cube_id == cube.id
    new_tea = remapped_id(cube.id, ids["tea"])
    assert [r.item.text for r in target.history(new_tea)] == [
        r.item.text for r in mos.history(ids["tea"])]
    assert all(r.item.cube_id == cube.id for r in target.history(new_tea))
    again = import_archive(target, tmp_path / "notes.mip", name="copy", on_conflict="merge")
    assert (again.memories_added, again.memories_unchanged) == (0, 5)  # stable ids: no dupes
    assert target.stats("copy")["cubes"][0]["items"] == 5


def test_conflict_modes(mos: MemOS, target: MemOS, tmp_path: Path) -> None:
    fill_source(mos)
    export_cube(mos, "notes", tmp_path / "notes.mip")
    target.create_cube("notes")
    [own] = target.add("notes", "The target's own memory")
    before = state(target)
    with pytest.raises(ConflictError, match="on-conflict"):
        import_archive(target, tmp_path / "notes.mip")
    skipped = import_archive(target, tmp_path / "notes.mip", on_conflict="skip")
    assert skipped.action == "skipped" and state(target) == before
    merged = import_archive(target, tmp_path / "notes.mip", on_conflict="merge")
    assert merged.memories_added == 4
    assert {i.text for i in target.list("notes", {"states": []})} >= {
        "The target's own memory", "Alice likes jasmine tea"}
    replaced = import_archive(target, tmp_path / "notes.mip", on_conflict="replace",
                              keep_ids=True)
    assert replaced.action == "replaced"
    texts = {i.text for i in target.list("notes", {"states": []})}
    assert "The target's own memory" not in texts and len(texts) == 4
    assert target.vault.get_many([own.id]) == {}
    cube = target.vault.get_cube("notes")
    assert cube.clock > before["cubes"][0]["clock"]  # clocks only move forward


def test_merge_brings_exactly_the_new_versions(
    mos: MemOS, target: MemOS, tmp_path: Path
) -> None:
    ids = fill_source(mos)
    export_cube(mos, "notes", tmp_path / "v1.mip")
    import_archive(target, tmp_path / "v1.mip", keep_ids=True)
    clock = mos.vault.get_cube("notes").clock
    mos.update(ids["paris"], text="Alice moved to Lyon in 2023")
    [new] = mos.add("notes", "Alice started learning the violin")
    delta = export_cube(mos, "notes", tmp_path / "delta.mip", since=clock)
    assert (delta.memories, delta.versions) == (2, 2)
    merged = import_archive(target, tmp_path / "delta.mip", keep_ids=True,
                            on_conflict="merge")
    assert (merged.memories_added, merged.memories_updated, merged.versions_added) == (1, 1, 2)
    assert [r.item.text for r in target.history(ids["paris"])] == [
        "Alice moved to Paris in 2021", "Alice moved to Lyon in 2023"]
    assert target.get(new.id).text == "Alice started learning the violin"
    assert target.search("violin", "notes", top_k=1)[0].item.id == new.id
    again = import_archive(target, tmp_path / "delta.mip", keep_ids=True, on_conflict="merge")
    assert again.versions_added == 0  # idempotent


def test_delta_prunes_memories_purged_at_the_source(
    mos: MemOS, target: MemOS, tmp_path: Path
) -> None:
    ids = fill_source(mos)
    export_cube(mos, "notes", tmp_path / "v1.mip")
    import_archive(target, tmp_path / "v1.mip", keep_ids=True)
    clock = mos.vault.get_cube("notes").clock
    mos.purge(ids["gone"])
    mos.add("notes", "Something new")
    export_cube(mos, "notes", tmp_path / "delta.mip", since=clock)
    report = import_archive(target, tmp_path / "delta.mip", keep_ids=True,
                            on_conflict="merge", prune=True)
    assert report.pruned == 1
    assert target.vault.get_many([ids["gone"]]) == {}


def test_export_as_of_an_earlier_clock(mos: MemOS, target: MemOS, tmp_path: Path) -> None:
    mos.create_cube("notes")
    [item] = mos.add("notes", "first text")
    clock = mos.vault.get_cube("notes").clock
    mos.update(item.id, text="second text")
    mos.add("notes", "added later")
    export_cube(mos, "notes", tmp_path / "old.mip", until=clock)
    import_archive(target, tmp_path / "old.mip", keep_ids=True)
    [only] = target.list("notes")
    assert only.text == "first text" and only.version == 1
    assert target.search("first", "notes", top_k=1)[0].item.id == item.id


def test_signature_verification(mos: MemOS, target: MemOS, tmp_path: Path) -> None:
    fill_source(mos)
    pair = generate_keypair(tmp_path / "keys" / "signer")
    other = generate_keypair(tmp_path / "keys" / "other")
    with pytest.raises(ConflictError):
        generate_keypair(tmp_path / "keys" / "signer")  # never overwrites silently
    assert (pair.private_path.stat().st_mode & 0o777) == 0o600
    signed = tmp_path / "signed.mip"
    report = export_cube(mos, "notes", signed, signing_key=load_private_key(pair.private_path))
    assert report.signed_by == pair.key_id
    trusted = [load_public_key(pair.public_path)]
    assert read_archive(signed, trusted_keys=trusted).signed_by == pair.key_id
    with pytest.raises(ArchiveTamperedError, match="not a trusted key"):
        read_archive(signed, trusted_keys=[load_public_key(other.public_path)])
    unsigned = tmp_path / "plain.mip"
    export_cube(mos, "notes", unsigned)
    assert read_archive(unsigned).signed_by is None
    with pytest.raises(ArchiveTamperedError, match="not signed"):
        read_archive(unsigned, trusted_keys=trusted)
    # Change a memory and fix its hash in the manifest: only the signature can tell.
    import hashlib
    import json
    import zipfile

    with zipfile.ZipFile(signed) as z:
        data = z.read("memories.jsonl").replace(b"jasmine", b"oolong!")
        manifest = json.loads(z.read("manifest.json"))
    manifest["files"]["memories.jsonl"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                           "size": len(data)}
    forged = rewrite(signed, tmp_path / "forged.mip", replace={
        "memories.jsonl": data, "manifest.json": json.dumps(manifest).encode()})
    before = state(target)
    with pytest.raises(ArchiveTamperedError, match="signature"):
        import_archive(target, forged)
    assert state(target) == before


def test_reembeds_when_the_target_uses_another_embedder(
    mos: MemOS, tmp_path: Path
) -> None:
    from memosys.models.embed import make_embedder

    ids = fill_source(mos)
    export_cube(mos, "notes", tmp_path / "notes.mip")
    use = make_embedder("use")
    with MemOS(Settings.load(tmp_path / "other"), embedder=use) as other:
        report = import_archive(other, tmp_path / "notes.mip", keep_ids=True)
        assert report.reembedded == 4
        assert any("re-embedded 4 memories with use-multilingual-v3" in m
                   for m in report.messages)
        cube = other.get_cube("notes")  # no embedder mismatch
        assert (cube.config.embedder_id, cube.config.embedding_dim) == (use.id, use.dim)
        assert other.search("what does Alice drink", "notes", top_k=1)[0].item.text == \
            "Alice likes jasmine tea"
        assert [r.item.text for r in other.history(ids["tea"])] == [
            r.item.text for r in mos.history(ids["tea"])]


def test_round_trip_from_sqlite_into_postgres(
    mos: MemOS, tmp_path: Path, embedder: Embedder
) -> None:
    from conftest import BACKENDS

    fill_source(mos)
    export_cube(mos, "notes", tmp_path / "notes.mip")
    with MemOS(Settings.load(tmp_path / "pg"), vault=BACKENDS["postgres"](tmp_path),
               embedder=embedder) as pg:
        import_archive(pg, tmp_path / "notes.mip", keep_ids=True)
        assert state(pg) == state(mos)
        assert _search(pg, "notes") == _search(mos, "notes")
        export_cube(pg, "notes", tmp_path / "back.mip")  # and back out of PostgreSQL
    with MemOS(Settings.load(tmp_path / "again"), embedder=embedder) as again:
        import_archive(again, tmp_path / "back.mip", keep_ids=True)
        assert state(again) == state(mos)
