"""MIP, the memosys Memory Interchange Protocol: a portable, verifiable cube file.

One zip file (`.mip`) holds `manifest.json` (format version, cube header, embedder id and
dimension, model fingerprints, counts, per-file SHA-256 and size, an optional ed25519
signature) and the files it lists: `memories.jsonl` (every memory with its full header and
usage statistics), `versions.jsonl` (the whole version history), optionally
`embeddings.npy`, and for incremental (delta) archives `live_ids.txt`. The format is
documented in docs/cube-format.md; the manifest's JSON Schema is
`memosys/infra/cube_manifest.schema.json`.

This module is the entry point; the parts live in:
- exchange_archive: the zip container, limits (zip-slip, bombs, sizes), manifest schema
- exchange_signing: ed25519 keys, manifest signing and verification
- exchange_export: cube -> archive
- exchange_import: archive -> cube (atomic; merge | skip | replace; re-embedding)
- exchange_interop: mem0 exports, plain JSONL/CSV in, readable JSONL out
"""

from __future__ import annotations

from memosys.infra.exchange_archive import ArchiveLimits, validate_manifest
from memosys.infra.exchange_export import ExportReport, export_cube
from memosys.infra.exchange_import import (
    CONFLICT_MODES,
    ImportReport,
    ParsedArchive,
    import_archive,
    read_archive,
)
from memosys.infra.exchange_signing import (
    generate_keypair,
    load_private_key,
    load_public_key,
)

__all__ = [
    "CONFLICT_MODES",
    "ArchiveLimits",
    "ExportReport",
    "ImportReport",
    "ParsedArchive",
    "export_cube",
    "generate_keypair",
    "import_archive",
    "load_private_key",
    "load_public_key",
    "read_archive",
    "validate_manifest",
]
