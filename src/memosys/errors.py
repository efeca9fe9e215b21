"""Typed errors. Every interface maps these to its own form (exit code, HTTP status)."""

from __future__ import annotations


class MemosysError(Exception):
    """Base class; `code` is stable and machine-readable, the message is for people."""

    code = "error"
    exit_code = 1


class ValidationError(MemosysError, ValueError):
    code = "invalid_input"
    exit_code = 2


class NotFoundError(MemosysError, KeyError):
    code = "not_found"
    exit_code = 3

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class ConflictError(MemosysError):
    """A write raced another writer or the target already exists."""

    code = "conflict"
    exit_code = 4


class EmbedderMismatchError(MemosysError):
    code = "embedder_mismatch"
    exit_code = 5


class StorageError(MemosysError):
    code = "storage_error"
    exit_code = 6


class EmbedderError(MemosysError):
    """A bad embedder spec, a failing endpoint, or malformed embeddings."""

    code = "embedder_error"
    exit_code = 7


class LLMError(MemosysError):
    """A bad LLM spec or request, missing weights, or a failing chat endpoint."""

    code = "llm_error"
    exit_code = 8


class AuthenticationError(MemosysError):
    """An unknown, malformed or revoked API key (HTTP 401)."""

    code = "unauthenticated"
    exit_code = 9


class PermissionDeniedError(MemosysError):
    """The actor can see the target but may not do this to it (HTTP 403). Anything the
    actor may not see is a NotFoundError instead, so existence is never revealed."""

    code = "permission_denied"
    exit_code = 10


class SensitiveDataError(ValidationError):
    """A write carries sensitive data into a cube whose policy rejects it."""

    code = "sensitive_data"


class RefusedByRuleError(ValidationError):
    """A write a cube's "never remember" extraction rule refuses (HTTP 422). Nothing of
    the call was written; the audit log names the rule (docs/extraction-rules.md)."""

    code = "refused_by_rule"

    def __init__(self, message: str, *, rule_id: str = "", rule_name: str = "") -> None:
        super().__init__(message)
        if not rule_id:  # rebuilt from a message (the HTTP client): the id is quoted in it
            import re

            found = re.search(r"rule '([^']+)'", message)
            rule_id = found.group(1) if found else ""
        self.rule_id = rule_id
        self.rule_name = rule_name

    @classmethod
    def of(cls, rule_id: str, rule_name: str) -> RefusedByRuleError:
        return cls(f"refused by the cube's extraction rule '{rule_id}' ({rule_name}); "
                   "nothing was written", rule_id=rule_id, rule_name=rule_name)


class ActivationError(MemosysError):
    """An activation (KV) cache that cannot be built, loaded or used."""

    code = "activation_error"
    exit_code = 11


class StaleActivationError(ActivationError):
    """A KV cache whose source memories changed (edited, deleted, purged) since it was built."""

    code = "stale_activation"


class ActivationModelMismatchError(ActivationError):
    """A KV cache built by another model or tokenizer than the one bound now."""

    code = "activation_model_mismatch"


class ArchiveError(MemosysError):
    """A cube archive (MIP) that cannot be imported: corrupt, truncated, or not a MIP
    file. Nothing was written to the target."""

    code = "invalid_archive"
    exit_code = 20


class ArchiveTamperedError(ArchiveError):
    """A file's SHA-256 or size differs from the manifest, or the signature does not
    verify: the archive changed after it was written (or signed)."""

    code = "archive_tampered"
    exit_code = 21


class UnsafeArchiveError(ArchiveError):
    """Over a size limit, a decompression bomb, or a path that would escape (zip-slip)."""

    code = "unsafe_archive"
    exit_code = 22


class TrainingInterrupted(MemosysError):
    """Training stopped early (Ctrl-C or a stop request); its checkpoint allows a resume."""

    code = "interrupted"
    exit_code = 130
