"""Hostile and damaged archives are refused with a typed error; the target is untouched.

The target already holds a cube of the same name and every import asks to *replace* it,
so an import that got anywhere near writing would show in the before/after comparison.
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange_helpers import fill_source, manifest_of, rewrite, state
from memosys.config import Settings
from memosys.errors import (
    ArchiveError,
    ArchiveTamperedError,
    ConflictError,
    UnsafeArchiveError,
)
from memosys.infra.exchange import ArchiveLimits, export_cube, import_archive
from memosys.models.embed import Embedder
from memosys.system import MemOS


@pytest.fixture
def archive(mos: MemOS, tmp_path: Path) -> Path:
    fill_source(mos)
    path = tmp_path / "good.mip"
    export_cube(mos, "notes", path)
    return path


@pytest.fixture
def target(tmp_path: Path, embedder: Embedder) -> Iterator[MemOS]:
    runtime = MemOS(Settings.load(tmp_path / "target"), embedder=embedder)
    runtime.create_cube("notes")
    runtime.add("notes", "The target's own memory, which must survive")
    yield runtime
    runtime.close()


def _refused(target: MemOS, path: Path, error: type[Exception], match: str,
             limits: ArchiveLimits | None = None) -> None:
    before = state(target)
    with pytest.raises(error, match=match):
        import_archive(target, path, on_conflict="replace", limits=limits)
    assert state(target) == before


def _with_fixed_manifest(src: Path, dst: Path, name: str, data: bytes) -> Path:
    """Swap a member and update its hash, so only deeper checks can catch the change."""
    manifest = manifest_of(src)
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return rewrite(src, dst, replace={name: data,
                                      "manifest.json": json.dumps(manifest).encode()})


def test_the_good_archive_imports(target: MemOS, archive: Path) -> None:
    report = import_archive(target, archive, on_conflict="replace")
    assert report.memories_added == 4


def test_tampered_member_is_refused(target: MemOS, archive: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        data = z.read("memories.jsonl").replace(b"jasmine", b"oolong!")
    bad = rewrite(archive, tmp_path / "bad.mip", replace={"memories.jsonl": data})
    _refused(target, bad, ArchiveTamperedError, "SHA-256")


def test_tampered_size_is_refused(target: MemOS, archive: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        data = z.read("versions.jsonl") + b"\n"
    bad = rewrite(archive, tmp_path / "bad.mip", replace={"versions.jsonl": data})
    _refused(target, bad, ArchiveTamperedError, "size")


def test_rewritten_content_with_fixed_hash_still_must_be_consistent(
    target: MemOS, archive: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(archive) as z:
        data = z.read("memories.jsonl").replace(b"jasmine", b"oolong!")
    bad = _with_fixed_manifest(archive, tmp_path / "bad.mip", "memories.jsonl", data)
    _refused(target, bad, ArchiveError, "last version differs")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_archive_is_refused(
    target: MemOS, archive: Path, tmp_path: Path, keep: float
) -> None:
    data = archive.read_bytes()
    bad = tmp_path / "cut.mip"
    bad.write_bytes(data[: int(len(data) * keep)])
    _refused(target, bad, ArchiveError, "truncated|corrupt|zip")


def test_corrupted_bytes_are_refused(target: MemOS, archive: Path, tmp_path: Path) -> None:
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("versions.jsonl")
    # flip bytes inside the compressed data of one member (local header is 30 + name)
    start = info.header_offset + 30 + len(info.filename) + 20
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    bad = tmp_path / "flipped.mip"
    bad.write_bytes(bytes(data))
    _refused(target, bad, ArchiveError, "corrupt|truncated|SHA-256|decompress")


@pytest.mark.parametrize("name", ["../evil.jsonl", "/etc/evil", "a/../../evil",
                                  "..\\evil", "C:/evil", "./memories.jsonl"])
def test_zip_slip_paths_are_refused(
    target: MemOS, archive: Path, tmp_path: Path, name: str
) -> None:
    bad = rewrite(archive, tmp_path / "slip.mip", add={name: b"x"})
    _refused(target, bad, UnsafeArchiveError, "unsafe path")
    assert not (tmp_path / "evil.jsonl").exists() and not (tmp_path.parent / "evil").exists()


def test_symlink_member_is_refused(target: MemOS, archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "link.mip"
    rewrite(archive, bad)
    with zipfile.ZipFile(bad, "a") as z:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    _refused(target, bad, UnsafeArchiveError, "not a plain file")


def test_duplicate_member_is_refused(target: MemOS, archive: Path, tmp_path: Path) -> None:
    bad = rewrite(archive, tmp_path / "dup.mip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(bad, "a") as z:
            z.writestr("memories.jsonl", b"{}")
    _refused(target, bad, UnsafeArchiveError, "twice")


def test_unlisted_and_missing_members_are_refused(
    target: MemOS, archive: Path, tmp_path: Path
) -> None:
    extra = rewrite(archive, tmp_path / "extra.mip", add={"payload.bin": b"hidden"})
    _refused(target, extra, ArchiveTamperedError, "not in the manifest")
    missing = rewrite(archive, tmp_path / "missing.mip", drop=("embeddings.npy",))
    _refused(target, missing, ArchiveTamperedError, "missing from the archive")


def test_decompression_bomb_by_ratio_is_refused(
    target: MemOS, archive: Path, tmp_path: Path
) -> None:
    bomb = b" " * (64 << 20)  # 64 MiB of spaces deflate ~1000x
    bad = _with_fixed_manifest(archive, tmp_path / "bomb.mip", "memories.jsonl", bomb)
    assert bad.stat().st_size < 1 << 20
    _refused(target, bad, UnsafeArchiveError, "decompression bomb")


def test_bomb_with_a_lying_size_header_is_refused(
    target: MemOS, archive: Path, tmp_path: Path
) -> None:
    """Manifest and zip headers claim 1 KiB; the data inflates to 8 MiB."""
    payload = b"A" * (8 << 20)
    manifest = manifest_of(archive)
    manifest["files"]["memories.jsonl"] = {"sha256": hashlib.sha256(payload).hexdigest(),
                                           "size": 1024}
    bad = rewrite(archive, tmp_path / "liar.mip", replace={
        "memories.jsonl": payload, "manifest.json": json.dumps(manifest).encode()})
    raw = bytearray(bad.read_bytes())
    pos = 0
    while (pos := raw.find(b"PK\x01\x02", pos)) != -1:  # central directory entries
        n = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46: pos + 46 + n] == b"memories.jsonl":
            struct.pack_into("<I", raw, pos + 24, 1024)
            local = struct.unpack_from("<I", raw, pos + 42)[0]
            struct.pack_into("<I", raw, local + 22, 1024)
        pos += 4
    bad.write_bytes(bytes(raw))
    _refused(target, bad, ArchiveError, "decompress|bomb|truncated")


def test_size_limits(target: MemOS, archive: Path) -> None:
    size = archive.stat().st_size
    _refused(target, archive, UnsafeArchiveError, "limit",
             ArchiveLimits(max_archive_bytes=size - 1))
    _refused(target, archive, UnsafeArchiveError, "limit", ArchiveLimits(max_file_bytes=100))
    _refused(target, archive, UnsafeArchiveError, "limit", ArchiveLimits(max_total_bytes=500))
    _refused(target, archive, UnsafeArchiveError, "entries", ArchiveLimits(max_entries=2))


def test_manifest_must_match_the_schema(target: MemOS, archive: Path, tmp_path: Path) -> None:
    manifest = manifest_of(archive)
    for change, match in [({"format_version": 2}, "format version 2"),
                          ({"counts": {"memories": 1}}, "schema"),
                          ({"files": {"../x": {"sha256": "0" * 64, "size": 1}}}, "schema"),
                          ({"unknown": True}, "schema")]:
        bad = rewrite(archive, tmp_path / "schema.mip",
                      replace={"manifest.json": json.dumps(manifest | change).encode()})
        _refused(target, bad, ArchiveError, match)
    not_json = rewrite(archive, tmp_path / "nj.mip", replace={"manifest.json": b"{nope"})
    _refused(target, not_json, ArchiveError, "not valid JSON")


def test_counts_and_records_are_checked(target: MemOS, archive: Path, tmp_path: Path) -> None:
    manifest = manifest_of(archive)
    manifest["counts"]["versions"] += 1
    bad = rewrite(archive, tmp_path / "count.mip",
                  replace={"manifest.json": json.dumps(manifest).encode()})
    _refused(target, bad, ArchiveError, "counts")
    with zipfile.ZipFile(archive) as z:
        lines = z.read("versions.jsonl").splitlines()
    broken = b"\n".join([lines[0], b'{"item_id": 1}', *lines[2:]]) + b"\n"
    bad = _with_fixed_manifest(archive, tmp_path / "rec.mip", "versions.jsonl", broken)
    _refused(target, bad, ArchiveError, "versions.jsonl line 2")


def test_not_a_zip(target: MemOS, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mip"
    junk.write_bytes(b"definitely not a zip" * 10)
    _refused(target, junk, ArchiveError, "not a readable zip")
    _refused(target, tmp_path / "absent.mip", ArchiveError, "cannot read")


def test_id_clash_in_another_cube_writes_nothing(
    mos: MemOS, target: MemOS, archive: Path
) -> None:
    import_archive(target, archive, name="first", keep_ids=True)
    before = state(target)
    with pytest.raises(ConflictError, match="keep-ids"):  # the cube id is taken
        import_archive(target, archive, name="second", keep_ids=True)
    with pytest.raises(ConflictError, match="another cube"):  # memory ids are taken
        import_archive(target, archive, keep_ids=True, on_conflict="merge")
    assert state(target) == before
