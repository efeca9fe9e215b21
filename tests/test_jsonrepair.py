"""Model output to JSON: strict, repaired, or a typed error."""

from __future__ import annotations

import pytest

from memosys.interface.jsonrepair import StructuredOutputError, as_object_list, parse_json


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('[{"text": "likes tea"}]', [{"text": "likes tea"}]),
        ('Sure! Here you go:\n```json\n[{"text": "a"}]\n```\nAnything else?', [{"text": "a"}]),
        ('Facts: [{"text": "a",}, {"text": "b"},]', [{"text": "a"}, {"text": "b"}]),
        ("[{'text': 'single quoted'}]", [{"text": "single quoted"}]),
        ('{"ok": True, "x": None}', {"ok": True, "x": None}),
        ("[\u201ctext\u201d]", ["text"]),
        ('[{"text": "complete"}, {"text": "cut off mid', [{"text": "complete"}]),
        ('[{"text": "a"}, {"text": "b"}', [{"text": "a"}, {"text": "b"}]),
        ('{"facts": [{"text": "x"}]} trailing words {"other": 1}', {"facts": [{"text": "x"}]}),
        ('[{"text": "has \\"quotes\\" and ] brackets"}]',
         [{"text": 'has "quotes" and ] brackets'}]),
    ],
)
def test_parses_and_repairs(output: str, expected: object) -> None:
    assert parse_json(output) == expected


@pytest.mark.parametrize("output", ["", "   ", "no json here at all", "{{{{", '[{"text": '])
def test_unusable_output_is_a_typed_error(output: str) -> None:
    with pytest.raises(StructuredOutputError):
        parse_json(output)


def test_object_list_shapes() -> None:
    assert as_object_list([{"a": "1"}, "junk", 3]) == [{"a": "1"}]
    assert as_object_list({"facts": [{"a": "1"}]}, "facts") == [{"a": "1"}]
    assert as_object_list({"memories": [{"a": "1"}]}) == [{"a": "1"}]
    assert as_object_list({"text": "one fact"}) == [{"text": "one fact"}]
    with pytest.raises(StructuredOutputError):
        as_object_list("a string")
