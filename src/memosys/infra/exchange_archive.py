"""The MIP container: a zip file with `manifest.json` and the files it lists.

Writing goes to a temporary file next to the target, renamed into place when complete,
so a crash never leaves half an archive under the final name.

Reading trusts nothing in the file. Before any content is read, the central directory is
checked: entry count, names (relative, no `..`, no backslashes or drive letters, no
duplicates, no links), declared sizes against per-file and total limits, and the
compression ratio (a decompression bomb declares a huge size for a tiny payload). While
a file streams, the bytes actually produced are counted (a lying header cannot push past
the declared size or the limits) and hashed; its SHA-256 and size must equal the
manifest's. The manifest itself is validated against `cube_manifest.schema.json`, and
every file in the zip must be in the manifest and the other way round.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import IO, Any

from memosys.errors import ArchiveError, ArchiveTamperedError, UnsafeArchiveError

MANIFEST = "manifest.json"
FORMAT = "memosys-mip"
FORMAT_VERSION = 1

_SAFE_NAME = re.compile(
    r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*(/[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*){0,3}$"
)
_CHUNK = 1 << 20
_DOS_EPOCH = (1980, 1, 1, 0, 0, 0)
"""Member times are fixed: the same cube exports to the same bytes (times live in the
manifest and the records)."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an import accepts. The defaults fit large real cubes; lower them for
    untrusted sources."""

    max_archive_bytes: int = 4 << 30
    max_file_bytes: int = 2 << 30
    max_total_bytes: int = 8 << 30
    max_manifest_bytes: int = 16 << 20
    max_entries: int = 100_000
    max_ratio: float = 200.0
    """Uncompressed / compressed size; checked for files over `ratio_floor` bytes."""
    ratio_floor: int = 1 << 20


@cache
def manifest_schema() -> dict[str, Any]:
    text = resources.files("memosys.infra").joinpath("cube_manifest.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def validate_manifest(manifest: Any) -> dict[str, Any]:
    """The manifest if it matches the schema; ArchiveError naming the first problem."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(manifest_schema(),
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise ArchiveError(f"manifest.json does not match the MIP schema at {where}: "
                           f"{first.message}")
    return manifest  # type: ignore[no-any-return]


def is_safe_name(name: str) -> bool:
    return len(name) <= 255 and bool(_SAFE_NAME.match(name)) and ".." not in name


class ArchiveWriter:
    """Add files (bytes or chunks), then `finish(manifest)` with the `files` table filled
    in; the manifest is written last and the archive renamed into place."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part",
                                   dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                    compresslevel=6)
        self.files: dict[str, dict[str, Any]] = {}

    def add(self, name: str, data: bytes | Iterator[bytes]) -> None:
        if not is_safe_name(name) or name == MANIFEST or name in self.files:
            raise ValueError(f"bad or duplicate archive member name {name!r}")
        digest, size = hashlib.sha256(), 0
        info = zipfile.ZipInfo(name, date_time=_DOS_EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        with self._zip.open(info, "w", force_zip64=True) as out:
            for chunk in [data] if isinstance(data, bytes) else data:
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        self.files[name] = {"sha256": digest.hexdigest(), "size": size}

    def finish(self, manifest: dict[str, Any]) -> Path:
        try:
            info = zipfile.ZipInfo(MANIFEST, date_time=_DOS_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            self._zip.writestr(info, json.dumps(manifest, indent=2, ensure_ascii=False))
            self._zip.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)


class ArchiveReader:
    """Opens and checks an archive; `read`/`lines` give verified file contents."""

    def __init__(self, path: str | Path, limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path).expanduser()
        self.limits = limits or ArchiveLimits()
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise ArchiveError(f"cannot read {self.path}: {exc.strerror}") from None
        if size > self.limits.max_archive_bytes:
            raise UnsafeArchiveError(f"{self.path} is {size} bytes; the limit is "
                                     f"{self.limits.max_archive_bytes}")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise ArchiveError(f"{self.path} is not a readable zip archive ({exc}); it may be "
                               "truncated or corrupt") from None
        try:
            self._entries = self._check_directory()
            self.manifest = self._read_manifest()
            self._check_listing()
        except BaseException:
            self._zip.close()
            raise
        self._total_read = 0

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_directory(self) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        lim = self.limits
        if len(infos) > lim.max_entries:
            raise UnsafeArchiveError(f"the archive has {len(infos)} entries; the limit is "
                                     f"{lim.max_entries}")
        entries: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            if not is_safe_name(name):
                raise UnsafeArchiveError(
                    f"unsafe path {name!r} in the archive: members must be relative paths "
                    "without '..', backslashes or drive letters (zip-slip)")
            if name in entries:
                raise UnsafeArchiveError(f"the archive holds {name!r} twice")
            mode = info.external_attr >> 16
            if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise UnsafeArchiveError(f"{name!r} is not a plain file (links and folders "
                                         "are refused)")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{name!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ArchiveError(f"{name!r} uses an unsupported compression method")
            if info.file_size > lim.max_file_bytes:
                raise UnsafeArchiveError(f"{name!r} declares {info.file_size} bytes; the "
                                         f"limit per file is {lim.max_file_bytes}")
            if (info.file_size > lim.ratio_floor
                    and info.file_size > lim.max_ratio * max(info.compress_size, 1)):
                raise UnsafeArchiveError(
                    f"{name!r} expands {info.file_size / max(info.compress_size, 1):.0f}x "
                    f"(limit {lim.max_ratio:.0f}x): refused as a decompression bomb")
            total += info.file_size
            entries[name] = info
        if total > lim.max_total_bytes:
            raise UnsafeArchiveError(f"the archive expands to {total} bytes; the limit is "
                                     f"{lim.max_total_bytes}")
        if MANIFEST not in entries:
            raise ArchiveError("the archive has no manifest.json: not a MIP cube archive")
        return entries

    def _read_manifest(self) -> dict[str, Any]:
        data = b"".join(self._stream(MANIFEST, self.limits.max_manifest_bytes))
        try:
            manifest = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveError(f"manifest.json is not valid JSON: {exc}") from None
        if isinstance(manifest, dict) and manifest.get("format") == FORMAT and \
                manifest.get("format_version") != FORMAT_VERSION:
            raise ArchiveError(
                f"this archive is MIP format version {manifest.get('format_version')}; this "
                f"memosys reads version {FORMAT_VERSION}. Upgrade memosys.")
        return validate_manifest(manifest)

    def _check_listing(self) -> None:
        listed = set(self.manifest["files"])
        present = set(self._entries) - {MANIFEST}
        if present - listed:
            raise ArchiveTamperedError(
                f"{sorted(present - listed)[0]!r} is in the archive but not in the manifest")
        if listed - present:
            raise ArchiveTamperedError(
                f"{sorted(listed - present)[0]!r} is in the manifest but missing from the "
                "archive (truncated?)")
        for name in listed:
            if self._entries[name].file_size != self.manifest["files"][name]["size"]:
                raise ArchiveTamperedError(f"{name!r} has another size than the manifest says")

    def names(self) -> list[str]:
        return sorted(self.manifest["files"])

    def _stream(self, name: str, limit: int) -> Iterator[bytes]:
        """The member's bytes, never more than its declared size or `limit`."""
        info = self._entries[name]
        allowed = min(info.file_size, limit)
        if info.file_size > limit:
            raise UnsafeArchiveError(f"{name!r} is {info.file_size} bytes; the limit is {limit}")
        produced = 0
        try:
            with self._zip.open(info) as fh:
                fh_io: IO[bytes] = fh
                while chunk := fh_io.read(_CHUNK):
                    produced += len(chunk)
                    if produced > allowed:
                        raise UnsafeArchiveError(
                            f"{name!r} expands past its declared size of {info.file_size} "
                            "bytes: refused as a decompression bomb")
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ArchiveError(f"{name!r} cannot be decompressed ({exc}); the archive is "
                               "truncated or corrupt") from None
        if produced != info.file_size:
            raise ArchiveError(f"{name!r} ended after {produced} of {info.file_size} bytes: "
                               "the archive is truncated")

    def chunks(self, name: str) -> Iterator[bytes]:
        """A listed file's bytes, checked against the manifest's size and SHA-256 as they
        stream (the last chunk is only yielded once the hash matched)."""
        if name not in self.manifest["files"]:
            raise ArchiveError(f"the archive has no {name!r}")
        expected = self.manifest["files"][name]
        digest = hashlib.sha256()
        pending: bytes | None = None
        for chunk in self._stream(name, self.limits.max_file_bytes):
            self._total_read += len(chunk)
            if self._total_read > self.limits.max_total_bytes:
                raise UnsafeArchiveError("the archive expands past the total size limit")
            digest.update(chunk)
            if pending is not None:
                yield pending
            pending = chunk
        if digest.hexdigest() != expected["sha256"]:
            raise ArchiveTamperedError(
                f"{name!r} does not match its SHA-256 in the manifest: the archive was "
                "changed or damaged")
        if pending is not None:
            yield pending

    def read(self, name: str) -> bytes:
        return b"".join(self.chunks(name))

    def lines(self, name: str) -> Iterator[tuple[int, bytes]]:
        """(line number, line) of a JSON Lines file; blank lines skipped. A caller only
        acts on lines after the whole file verified, so it should collect them first."""
        buffer = b""
        number = 0
        for chunk in self.chunks(name):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                number += 1
                if line.strip():
                    yield number, line
        if buffer.strip():
            yield number + 1, buffer
