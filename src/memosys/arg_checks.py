"""Checks of API arguments shared by the Memory API and its parts: a wrong type or range is
a ValidationError naming the argument, before anything is read or written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memosys.errors import ValidationError


def text_arg(name: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValidationError(f"{name} must not be empty")
    return value


def int_arg(name: str, value: Any, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValidationError(f"{name} must be {bound}, got {value}")
    return value


def seq_arg(name: str, value: Any) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | tuple | list):
        raise ValidationError(f"{name} must be a list, got {type(value).__name__}")
    return value


def dict_arg(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"a message must be a dict or Message, got {type(value).__name__}")
    return value
