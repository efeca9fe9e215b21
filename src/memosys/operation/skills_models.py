"""The typed shapes of tool and skill memory: what an agent records (a tool call, a
trajectory of them) and what distillation writes (a skill's steps and pitfalls).

Shared by the Python API, REST and MCP so every interface validates the same way: a bad
field is a `ValidationError` (HTTP 422) naming the field, and nothing is written. Limits
are errors, never silent truncation.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from memosys.errors import ValidationError

MAX_TOOL_NAME = 128
MAX_ARGUMENTS_CHARS = 64_000
"""JSON size of one call's arguments."""
MAX_RESULT_CHARS = 20_000
"""A tool result longer than this is an error: store a summary or a reference instead."""
MAX_TASK_CHARS = 4_000
MAX_STEPS = 200

_TOOL_RE = re.compile(r"^[^\s,][^\s,]{0,127}$")
"""No whitespace or commas: the name becomes the tag `tool:<name>`."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolCall(_In):
    """One tool call: what was called with which arguments, and what came of it."""

    tool: str = Field(max_length=MAX_TOOL_NAME)
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    """Text, or any JSON value (stored as its JSON text)."""
    success: StrictBool = True
    duration_ms: float | None = Field(default=None, ge=0, le=7 * 24 * 3600 * 1000)
    error: str | None = Field(default=None, max_length=MAX_RESULT_CHARS)

    @field_validator("tool")
    @classmethod
    def _tool(cls, value: str) -> str:
        if not _TOOL_RE.match(value):
            raise ValueError(f"invalid tool name {value!r}: 1-{MAX_TOOL_NAME} characters, "
                             "no whitespace or commas")
        return value

    @field_validator("arguments")
    @classmethod
    def _arguments(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(value, ensure_ascii=False, sort_keys=True))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"arguments must be JSON values: {exc}") from None
        if size > MAX_ARGUMENTS_CHARS:
            raise ValueError(f"arguments are {size} characters of JSON; the limit is "
                             f"{MAX_ARGUMENTS_CHARS}")
        return value

    @field_validator("result")
    @classmethod
    def _result(cls, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, ensure_ascii=False, sort_keys=True)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"result must be text or a JSON value: {exc}") from None
        if text is not None and len(text) > MAX_RESULT_CHARS:
            raise ValueError(f"result is {len(text)} characters; the limit is "
                             f"{MAX_RESULT_CHARS} (store a summary or a reference)")
        return text

    def signature(self) -> str:
        """`tool(k=v, ...)`: how a call reads in memory texts and prompts."""
        return f"{self.tool}({format_arguments(self.arguments)})"


class Trajectory(_In):
    """One agent run for a task: its tool calls in order, and whether the task succeeded."""

    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS)
    steps: list[ToolCall] = Field(default_factory=list, max_length=MAX_STEPS)
    success: StrictBool
    outcome: str | None = Field(default=None, max_length=MAX_RESULT_CHARS)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("task must not be empty")
        return value.strip()


class SkillStep(BaseModel):
    """One step of a skill: the tool, the arguments its runs agreed on, the ones that varied."""

    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Argument values every supporting run used (the typical call)."""
    varying: dict[str, list[Any]] = Field(default_factory=dict)
    """Arguments the runs filled in differently, with a few example values."""
    support: int = 0
    """How many of the skill's trajectories contain this step (aligned)."""

    def render(self) -> str:
        parts = [f"{k}={_value(v)}" for k, v in self.arguments.items()]
        parts += [f"{k}=<{' | '.join(_value(x) for x in xs)}>" for k, xs in self.varying.items()]
        return f"{self.tool}({', '.join(parts)})"


class Pitfall(BaseModel):
    """What went wrong in runs of the same kind of task."""

    tool: str | None
    message: str
    count: int = 1
    source: str = "failed_trajectory"
    """failed_trajectory (a run that did not succeed) | failed_step (a step retried in a run
    that succeeded anyway)."""


class SkillPayload(BaseModel):
    """`metadata["skill"]` of a skill memory."""

    name: str
    when: str
    steps: list[SkillStep]
    pitfalls: list[Pitfall] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    """Example tasks of the supporting trajectories (what retrieval compares a task with)."""
    support: int = 0
    failures: int = 0
    origin: str = "distilled"
    """distilled (written by `distil_skills`; it may update or retire it) | manual."""
    wording: str = "alignment"
    """alignment (LLM-free) | model id (name and `when` worded by the configured model)."""


def format_arguments(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in arguments.items())


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def parse_model(model: type[_In], value: Any, what: str) -> Any:
    """`value` (a model instance or a dict) as `model`, or a ValidationError naming `what`."""
    from memosys.types import validated

    if isinstance(value, model):
        return value
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be an object, got {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise ValidationError(f"{what}: field names must be strings")
    try:
        return validated(model, **value)
    except ValidationError as exc:
        raise ValidationError(f"{what}: {exc}") from None
