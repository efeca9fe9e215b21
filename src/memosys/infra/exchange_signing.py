"""ed25519 keys and manifest signatures for cube archives (MIP).

A signature covers the manifest's canonical JSON (sorted keys, compact separators, UTF-8)
without its `signature` member; the manifest lists every other file's SHA-256, so the
signature covers the whole archive. Keys on disk: the private key as unencrypted PKCS#8
PEM (mode 0600), the public key as one line `ed25519:<base64 of the 32 raw bytes>`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from memosys.errors import ArchiveTamperedError, ConflictError, ValidationError

_PUB_PREFIX = "ed25519:"


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public: Ed25519PublicKey) -> str:
    """16 hex digits of the SHA-256 of the raw public key: short enough to read aloud."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(public: Ed25519PublicKey) -> str:
    return _PUB_PREFIX + base64.b64encode(_raw(public)).decode()


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str
    public_key: str


def generate_keypair(path: str | Path, *, overwrite: bool = False) -> KeyPair:
    """Write `<path>` (private, 0600) and `<path>.pub`; refuse to overwrite unless asked."""
    private_path = Path(path).expanduser()
    public_path = private_path.with_name(private_path.name + ".pub")
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise ConflictError(f"{private_path} or {public_path} exists (pass --force to replace)")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_text(public_key_text(key.public_key()) + "\n")
    return KeyPair(private_path, public_path, key_id(key.public_key()),
                   public_key_text(key.public_key()))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).expanduser().read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValidationError(f"cannot read the private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValidationError(f"{path} is not an ed25519 private key")
    return key


def parse_public_key(text: str) -> Ed25519PublicKey:
    """`ed25519:<base64>`, bare base64 of the 32 raw bytes, or a PEM public key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an ed25519 key")
            return key
        raw = base64.b64decode(text.removeprefix(_PUB_PREFIX), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValidationError(f"not an ed25519 public key: {exc}") from None


def load_public_key(path_or_text: str | Path) -> Ed25519PublicKey:
    """A public key file, or the key's text itself."""
    candidate = Path(str(path_or_text)).expanduser()
    if not str(path_or_text).startswith(_PUB_PREFIX) and candidate.is_file():
        return parse_public_key(candidate.read_text())
    return parse_public_key(str(path_or_text))


def sign_manifest(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The manifest with its `signature` member added."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    public = key.public_key()
    return body | {"signature": {
        "algorithm": "ed25519",
        "key_id": key_id(public),
        "public_key": base64.b64encode(_raw(public)).decode(),
        "value": base64.b64encode(key.sign(canonical_json(body))).decode(),
    }}


def verify_manifest(
    manifest: dict[str, Any], trusted: list[Ed25519PublicKey] | None = None
) -> str | None:
    """Check the signature, if any, against the key it names; with `trusted`, the archive
    must be signed by one of those keys. Returns the signer's key id (None: unsigned)."""
    sig = manifest.get("signature")
    if sig is None:
        if trusted:
            raise ArchiveTamperedError("the archive is not signed, but a signature from a "
                                       "trusted key was required")
        return None
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"]))
        public.verify(base64.b64decode(sig["value"]), canonical_json(body))
    except (InvalidSignature, ValueError):
        raise ArchiveTamperedError(
            f"the manifest's signature (key {sig.get('key_id')}) does not verify: the "
            "archive was changed after it was signed") from None
    if key_id(public) != sig["key_id"]:
        raise ArchiveTamperedError("the signature's key id does not match its public key")
    if trusted and _raw(public) not in {_raw(k) for k in trusted}:
        raise ArchiveTamperedError(
            f"the archive is signed by key {sig['key_id']}, which is not a trusted key")
    return str(sig["key_id"])
