"""The topic index through the runtime (`MemOS.topics`, `MemOS.topic`, `MemOS.overview`,
model summaries, the retrieval stage, `memosys graph topics`), with the real MiniLM
embedder; storage behaviour on both backends is in test_topics_store.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memosys.config import Settings
from memosys.errors import NotFoundError, ValidationError
from memosys.interface.cli import app
from memosys.operation.topics import TopicStage
from memosys.system import MemOS

POTTERY = [
    "I signed up for a pottery class and the clay wheel is hard to master",
    "My pottery bowl cracked in the kiln again, the clay was too wet",
    "Glazing pottery takes patience; the clay has to dry for days",
    "The pottery teacher showed us how to center clay on the wheel",
]
HIKING = [
    "We went hiking on the mountain trail at dawn",
    "My new hiking boots gave me blisters on the mountain trail",
    "Hiking up the ridge trail we saw an eagle over the mountain",
    "Next weekend we go hiking again, a longer mountain trail",
]


@pytest.fixture
def filled(mos: MemOS) -> MemOS:
    mos.create_cube("me")
    for pottery, hiking in zip(POTTERY, HIKING, strict=True):
        mos.add("me", pottery, user="caroline")
        mos.add("me", hiking, user="melanie")
    return mos


def _by_word(mos: MemOS, word: str):
    return next(t for t in mos.topics("me") if word in t.label)


def test_topics_cluster_memories_as_they_arrive(filled: MemOS) -> None:
    topics = filled.topics("me")
    pottery, hiking = _by_word(filled, "pottery"), _by_word(filled, "hiking")
    assert pottery.id != hiking.id and len(topics) <= 3
    got = {filled.get(i).text for i in pottery.memory_ids}
    assert set(POTTERY) <= got and not set(HIKING) & got
    assert pottery.size == len(pottery.memory_ids) and pottery.cube_id == filled.get_cube("me").id
    same = filled.topic(pottery.id)
    assert same.label == pottery.label and same.memory_ids == pottery.memory_ids
    assert "clay" in pottery.summary and pottery.updated_at.tzinfo is not None
    with pytest.raises(NotFoundError):
        filled.topic("t-nope")
    with pytest.raises(ValidationError):
        filled.topic("")


def test_overview_of_a_user(filled: MemOS) -> None:
    everything = filled.overview("me")
    assert {t.id for t in everything.topics} >= {_by_word(filled, "pottery").id,
                                                 _by_word(filled, "hiking").id}
    assert everything.memories == 8
    mine = filled.overview("me", user="caroline")
    assert mine.topics[0].id == _by_word(filled, "pottery").id and mine.memories == 4


def test_purge_and_edit_keep_topics_current(filled: MemOS) -> None:
    pottery = _by_word(filled, "pottery")
    kiln = next(i for i in pottery.memory_ids if "kiln" in filled.get(i).text)
    filled.purge([kiln])
    after = filled.topic(pottery.id)
    assert kiln not in after.memory_ids
    assert "kiln" not in f"{after.label} {after.summary} {after.keywords}".lower()
    # an edit re-embeds: the memory moves to the topic it now belongs to
    moved = next(i for i in after.memory_ids)
    filled.update(moved, text="Hiking the mountain trail in the rain, wet boots")
    assert moved in _by_word(filled, "hiking").memory_ids


def test_other_users_see_no_topics_of_cubes_they_may_not_read(filled: MemOS) -> None:
    filled.create_user("bob", role="member")
    _, key = filled.create_api_key("bob")
    bob = filled.as_actor(filled.authenticate(key))
    topic = _by_word(filled, "pottery")
    with pytest.raises(NotFoundError):
        bob.topics("me")
    with pytest.raises(NotFoundError):
        bob.topic(topic.id)
    filled.share_cube("me", "bob", "read")
    assert bob.topic(topic.id).id == topic.id


def test_rebuild_and_switched_off(home: Path, embedder) -> None:
    mos = MemOS(Settings.load(home, topics="off"), embedder=embedder)
    try:
        mos.create_cube("me")
        for text in POTTERY + HIKING:
            mos.add("me", text)
        assert mos.topics("me") == []
        assert mos.topic_index.rebuild("me") >= 2
        assert any("pottery" in t.label for t in mos.topics("me"))
    finally:
        mos.close()


def test_model_summary(filled: MemOS, local) -> None:
    """The bound model (real SmolLM2) writes a label and a summary; a purge of a member
    brings the keyword summary back (the model's text may name the purged memory)."""
    written = filled.topic_index.summarise("me", llm=local, limit=1)
    assert written == 1
    top = next(t for t in filled.topics("me") if t.summary_by == "model")
    assert top.label and top.summary
    filled.purge([top.memory_ids[0]])
    assert filled.topic(top.id).summary_by == "keywords"


def test_topic_stage_boosts_the_nearest_topic(filled: MemOS) -> None:
    filled.retriever.insert_stage(TopicStage(filled.vault))
    hits = filled.search("what happened with the clay?", "me", top_k=3)
    assert hits and all("topics" in h.scores for h in hits if "clay" in h.item.text)


def test_cli_topics(filled: MemOS, home: Path) -> None:
    filled.close()
    runner = CliRunner()
    out = runner.invoke(app, ["graph", "topics", "-c", "me", "--home", str(home), "--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    assert any("pottery" in t["label"] for t in listed)
    first = listed[0]
    one = runner.invoke(app, ["graph", "topic", first["id"], "--home", str(home), "--json"])
    assert one.exit_code == 0, one.output
    assert json.loads(one.output)["memories"]
    ov = runner.invoke(app, ["graph", "overview", "-c", "me", "--home", str(home)])
    assert ov.exit_code == 0 and "pottery" in ov.output
