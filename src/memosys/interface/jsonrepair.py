"""Get JSON out of model output: strict first, then a bounded set of repairs, else a typed
error. Small local models wrap JSON in prose or code fences, use single quotes, leave
trailing commas or stop mid-array; each repair here fixes one such habit and nothing is
guessed beyond that (a truncated object is dropped, not completed with invented values).
"""

from __future__ import annotations

import json
import re
from typing import Any

from memosys.errors import MemosysError


class StructuredOutputError(MemosysError):
    """The model's output held no usable JSON."""

    code = "bad_model_output"
    exit_code = 9


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
_PY_LITERALS = re.compile(r"\b(True|False|None)\b")


def parse_json(output: str) -> Any:
    """The first JSON value in `output` (object or array), repaired if needed."""
    if not isinstance(output, str) or not output.strip():
        raise StructuredOutputError("the model returned no output")
    candidates = [m.group(1) for m in _FENCE.finditer(output)] + [output]
    for candidate in candidates:
        start = _first_open(candidate)
        if start is None:
            continue
        body = candidate[start:]
        for attempt in _repairs(body):
            try:
                value, _ = json.JSONDecoder().raw_decode(attempt)
            except json.JSONDecodeError:
                continue
            return value
    preview = output.strip().replace("\n", " ")[:120]
    raise StructuredOutputError(f"no parseable JSON in the model output: {preview!r}")


def _first_open(text: str) -> int | None:
    positions = [p for p in (text.find("["), text.find("{")) if p >= 0]
    return min(positions) if positions else None


def _repairs(body: str) -> list[str]:
    """Progressively stronger repairs of one JSON text."""
    steps = [body]
    cleaned = _TRAILING_COMMA.sub(r"\1", body.translate(_SMART_QUOTES))
    steps.append(cleaned)
    pythonish = _PY_LITERALS.sub(
        lambda m: {"True": "true", "False": "false", "None": "null"}[m.group(1)], cleaned
    )
    steps.append(pythonish)
    if '"' not in pythonish and "'" in pythonish:
        steps.append(pythonish.replace("'", '"'))
    steps.append(_close_truncated(steps[-1]))
    return steps


def _close_truncated(text: str) -> str:
    """Cut a truncated array back to its last complete element and close the brackets."""
    stack: list[str] = []
    in_string = escaped = False
    last_complete = -1
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}":
            if not stack:
                break
            stack.pop()
            if not stack:
                return text[: i + 1]
            if len(stack) == 1 and stack[0] == "]":
                last_complete = i
    if stack == ["]"] or (stack and stack[0] == "]" and last_complete >= 0):
        return text[: last_complete + 1] + "]" if last_complete >= 0 else "[]"
    return text


def as_object_list(value: Any, key: str | None = None) -> list[dict[str, Any]]:
    """Accept `[{...}, ...]`, `{"key": [...]}` or a single `{...}`; keep only objects."""
    if isinstance(value, dict):
        if key is not None and isinstance(value.get(key), list):
            value = value[key]
        else:
            lists = [v for v in value.values() if isinstance(v, list)]
            value = lists[0] if len(lists) == 1 and not _looks_like_item(value) else [value]
    if not isinstance(value, list):
        raise StructuredOutputError(f"expected a list of objects, got {type(value).__name__}")
    return [v for v in value if isinstance(v, dict)]


def _looks_like_item(value: dict[str, Any]) -> bool:
    return any(isinstance(v, str) for v in value.values())
