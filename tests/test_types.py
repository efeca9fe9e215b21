"""The data model validates every field with a message that names it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from memosys.errors import ValidationError
from memosys.types import CubeConfig, MemCube, MemoryItem, MemoryType, new_id, validated


def test_ids_are_time_ordered_uuid7() -> None:
    ids = [new_id() for _ in range(200)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert len(set(ids)) == 200
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)  # millisecond prefix


def test_defaults_and_naive_times_become_utc() -> None:
    item = MemoryItem(cube_id="c", text="hello", valid_from=datetime(2023, 5, 8))
    assert item.memory_type == MemoryType.FACT and item.version == 1
    assert item.valid_from == datetime(2023, 5, 8, tzinfo=UTC)
    assert item.event_time == item.valid_from
    undated = MemoryItem(cube_id="c", text="x")
    assert undated.event_time == undated.created_at


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": ""}, "text: text must not be empty"),
        ({"text": "x", "memory_type": "gossip"}, "memory_type"),
        ({"text": "x", "visibility": "world"}, "visibility"),
        ({"text": "x", "state": "zombie"}, "state"),
        ({"text": "x", "tags": ["ok", ""]}, "invalid tag"),
        ({"text": "x", "version": 0}, "version"),
        ({"text": "x", "colour": "red"}, "colour"),
        ({"text": "x", "stats": {"access_count": -1}}, "access_count"),
        ({"text": "x", "valid_from": "not a date"}, "valid_from"),
        ({"text": "x", "valid_from": datetime(2024, 2, 1), "valid_to": datetime(2024, 1, 1)},
         "valid_to is before valid_from"),
    ],
)
def test_bad_item_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validated(MemoryItem, cube_id="c", **fields)


def test_tags_are_cleaned_and_deduplicated() -> None:
    assert MemoryItem(cube_id="c", text="x", tags=[" food ", "food", "travel"]).tags == [
        "food", "travel"]


def test_cube_validation() -> None:
    config = CubeConfig(embedder_id="minilm-l6-v2", embedding_dim=384)
    assert MemCube(name="alice.notes-1", config=config).clock == 0
    with pytest.raises(ValidationError, match="invalid cube name"):
        validated(MemCube, name="../etc", config=config)
    with pytest.raises(ValidationError, match="embedding_dim"):
        validated(MemCube, name="ok", config={"embedder_id": "m", "embedding_dim": 0})
