"""`/api/v1/cubes/{cube}/extraction`: a cube's extraction categories, rules and instructions
(memosys.system_extraction; docs/extraction-rules.md).

* `GET` — the config (read permission on the cube).
* `PUT` — replace the parts given (`categories`, `rules`, `instructions`, `threshold`;
  an absent part is kept); `expected_version` refuses a stale edit with 409. Needs the
  cube's `share` permission (owner/admin): anyone else gets 403.
* `POST .../extraction/test` — dry run of a text: which rule refuses it, its categories.

A write a deny rule refuses, on any route, answers 422 with code `refused_by_rule`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES, tags=["extraction"])

Runtime = Annotated[MemOS, Depends(request_runtime)]


class CategoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=80)
    description: str = Field(default="", max_length=500)
    keywords: list[str] = Field(default_factory=list, max_length=50)


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=64)
    """Default: derived from the name."""
    name: str = Field(max_length=80)
    kind: Literal["deny", "allow"] = "deny"
    keywords: list[str] = Field(default_factory=list, max_length=50)
    patterns: list[str] = Field(default_factory=list, max_length=50)
    """Regular expressions (Python syntax, case-insensitive)."""
    pii: list[str] = Field(default_factory=list, max_length=10)
    """PII labels: email, phone, payment_card, national_id, iban, ip_address, secret."""
    category: str | None = Field(default=None, max_length=80)
    description: str = Field(default="", max_length=500)


class ExtractionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: list[CategoryIn] | None = Field(default=None, max_length=50)
    rules: list[RuleIn] | None = Field(default=None, max_length=100)
    instructions: str | None = Field(default=None, max_length=4000)
    threshold: float | None = Field(default=None, gt=0, le=1)
    expected_version: int | None = Field(default=None, ge=0)


class ExtractionConfigOut(BaseModel):
    cube_id: str
    version: int
    updated_at: str | None
    updated_by: str | None
    instructions: str
    threshold: float
    categories: list[dict[str, Any]]
    rules: list[dict[str, Any]]


class ExtractionTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=200_000)


class ExtractionTestOut(BaseModel):
    cube_id: str
    version: int
    direct_write: Literal["refused", "stored"]
    denied_by: dict[str, str] | None
    allowed_by: list[dict[str, str]]
    categories: list[str]
    as_raw_input: str
    """The text as a conversation turn would be stored (withheld sentences marked)."""
    withheld: list[dict[str, str]]


@router.get("/cubes/{cube}/extraction", response_model=ExtractionConfigOut)
def get_extraction(cube: str, mos: Runtime) -> ExtractionConfigOut:
    """The cube's extraction categories, rules and instructions."""
    return ExtractionConfigOut(**mos.extraction_rules(cube))


@router.put("/cubes/{cube}/extraction", response_model=ExtractionConfigOut)
def put_extraction(cube: str, body: ExtractionUpdate, mos: Runtime) -> ExtractionConfigOut:
    """Replace the given parts of the cube's extraction config (owner or admin)."""
    return ExtractionConfigOut(**mos.set_extraction_rules(
        cube,
        categories=[c.model_dump() for c in body.categories]
        if body.categories is not None else None,
        rules=[r.model_dump() for r in body.rules] if body.rules is not None else None,
        instructions=body.instructions, threshold=body.threshold,
        expected_version=body.expected_version))


@router.post("/cubes/{cube}/extraction/test", response_model=ExtractionTestOut)
def test_extraction(cube: str, body: ExtractionTest, mos: Runtime) -> ExtractionTestOut:
    """Dry run: what the cube's rules would do to a text (nothing is written)."""
    return ExtractionTestOut(**mos.test_extraction_rules(cube, body.text))
