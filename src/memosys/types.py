"""The units of memosys: MemoryItem (header + payload + stats) and MemCube.

Pydantic models so every interface (Python, CLI, REST later) validates the same way and
bad fields fail with a message that names the field.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memosys.errors import ValidationError

MAX_TEXT_CHARS = 200_000
"""A longer text is an error, never silently cut: split documents into chunks first."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_TAG_RE = re.compile(r"^[^\s,][^,]{0,63}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """Time-ordered UUIDv7 (RFC 9562), so ids sort by creation time and index well."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


class MemoryKind(StrEnum):
    PLAINTEXT = "plaintext"
    ACTIVATION = "activation"
    PARAMETRIC = "parametric"


class MemoryType(StrEnum):
    FACT = "fact"
    PREFERENCE = "preference"
    EVENT = "event"
    RULE = "rule"
    PERSONA = "persona"
    EPISODE = "episode"
    DOCUMENT = "document"
    SKILL = "skill"
    TOOL_CALL = "tool_call"
    """One tool call of an agent (tool, arguments, result, success, duration; skills.md)."""
    TRAJECTORY = "trajectory"
    """One agent run for a task: its tool calls in order and whether it succeeded."""


class Visibility(StrEnum):
    PRIVATE = "private"
    CUBE = "cube"
    PUBLIC = "public"


class MemoryState(StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"
    """Kept as is, not retrieved by default, exempt from decay (lifecycle)."""
    ARCHIVED = "archived"
    SUPERSEDED = "superseded"
    INVALIDATED = "invalidated"
    DELETED = "deleted"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False)


class Source(_Model):
    """Where a memory came from; the provenance that maps it back to raw input."""

    user: str | None = None
    agent: str | None = None
    session: str | None = None
    role: str | None = None
    message_ids: list[str] = Field(default_factory=list)
    document_uri: str | None = None


class Stats(_Model):
    access_count: int = Field(default=0, ge=0)
    last_accessed: datetime | None = None
    used_in_answer_count: int = Field(default=0, ge=0)
    feedback_score: float = 0.0
    heat: float = Field(default=0.0, ge=0.0)


def as_utc(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC so comparisons never mix naive and aware."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class MemoryItem(_Model):
    id: str = Field(default_factory=new_id)
    cube_id: str
    kind: MemoryKind = MemoryKind.PLAINTEXT
    memory_type: MemoryType = MemoryType.FACT
    text: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    source: Source = Field(default_factory=Source)
    tags: list[str] = Field(default_factory=list)
    owner: str | None = None
    visibility: Visibility = Visibility.CUBE
    sensitivity: list[str] = Field(default_factory=list)
    state: MemoryState = MemoryState.ACTIVE
    version: int = Field(default=1, ge=1)
    supersedes: str | None = None
    derived_from: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    stats: Stats = Field(default_factory=Stats)

    @field_validator("text")
    @classmethod
    def _text_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be empty")
        if len(value) > MAX_TEXT_CHARS:
            raise ValueError(
                f"text is {len(value)} characters; the limit is {MAX_TEXT_CHARS} "
                "(split long documents into chunks)"
            )
        return value

    @field_validator("tags")
    @classmethod
    def _tags_valid(cls, value: list[str]) -> list[str]:
        cleaned: list[str] = []
        for tag in value:
            tag = tag.strip()
            if not _TAG_RE.match(tag):
                raise ValueError(f"invalid tag {tag!r}: 1-64 characters, no commas")
            if tag not in cleaned:
                cleaned.append(tag)
        return cleaned

    @field_validator("created_at", "updated_at", "valid_from", "valid_to")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return as_utc(value)

    @model_validator(mode="after")
    def _valid_range(self) -> MemoryItem:
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        return self

    @property
    def event_time(self) -> datetime:
        return self.valid_from or self.created_at


class CubeConfig(_Model):
    embedder_id: str
    embedding_dim: int = Field(gt=0)
    model_fingerprint: str | None = None


class MemCube(_Model):
    id: str = Field(default_factory=new_id)
    name: str
    owner: str | None = None
    description: str = ""
    config: CubeConfig
    clock: int = Field(default=0, ge=0)
    created_at: datetime = Field(default_factory=utcnow)

    @field_validator("name")
    @classmethod
    def _name_valid(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"invalid cube name {value!r}: 1-128 characters of letters, digits, "
                "'_', '-', '.', starting with a letter or digit"
            )
        return value

    @field_validator("created_at")
    @classmethod
    def _tz(cls, value: datetime) -> datetime:
        return as_utc(value)  # type: ignore[return-value]


T = TypeVar("T", bound=BaseModel)


def validated(model: type[T], **fields: Any) -> T:
    """Build a model, turning pydantic's error into memosys's typed ValidationError."""
    from pydantic import ValidationError as PydanticError

    try:
        return model(**fields)
    except PydanticError as exc:
        raise ValidationError(_describe(exc)) from None


def _describe(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "value"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
