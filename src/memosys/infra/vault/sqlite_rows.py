"""Small conversions shared by the SQLite vault's modules: timestamps and id chunks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TypeVar

T = TypeVar("T")


def to_ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def from_ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def chunks(values: list[T], size: int) -> Iterator[list[T]]:
    """`values` in slices of `size`: SQLite caps the number of bound parameters."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
