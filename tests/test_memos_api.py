"""The Memory API on the runtime, with the real MiniLM embedder and the SQLite vault."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memosys.config import Settings
from memosys.errors import (
    ConflictError,
    EmbedderMismatchError,
    NotFoundError,
    ValidationError,
)
from memosys.models.embed import make_embedder
from memosys.system import MemOS, Message
from memosys.types import MemoryState, MemoryType

MAY_8 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def _chat(mos: MemOS) -> list:
    mos.create_cube("alice")
    return mos.add("alice", messages=[
        {"role": "user", "name": "Alice", "content": "I adopted a beagle called Rex.",
         "id": "D1:1", "timestamp": MAY_8},
        Message(role="assistant", content="Lovely! How old is he?", id="D1:2"),
        {"role": "user", "name": "Alice", "content": "Two years. I also love climbing.",
         "id": "D1:3", "timestamp": MAY_8},
    ], user="alice", session="s1")


def test_messages_are_kept_verbatim_as_episodes_with_provenance(mos: MemOS) -> None:
    items = _chat(mos)
    assert [i.memory_type for i in items] == [MemoryType.EPISODE] * 3
    assert items[0].text == "Alice: I adopted a beagle called Rex."
    assert items[1].text == "Lovely! How old is he?"
    assert items[0].source.message_ids == ["D1:1"]
    assert items[0].source.session == "s1" and items[0].source.user == "alice"
    assert items[0].source.role == "user" and items[1].source.role == "assistant"
    assert items[0].valid_from == MAY_8
    assert items[0].metadata["speaker"] == "Alice"
    stored = mos.get(items[0].id)
    assert stored == items[0].model_copy(update={"stats": stored.stats})


def test_search_is_hybrid_with_scores_and_provenance(mos: MemOS) -> None:
    _chat(mos)
    mos.add("alice", "Alice's favourite drink is green tea", memory_type="preference")
    hits = mos.search("which dog breed does Alice have?", "alice", top_k=2)
    assert hits[0].item.text == "Alice: I adopted a beagle called Rex."
    assert set(hits[0].ranks) <= {"bm25", "vector"} and "vector" in hits[0].ranks
    assert hits[0].score >= hits[1].score
    assert hits[0].provenance["message_ids"] == ["D1:1"]
    assert hits[0].provenance["session"] == "s1"
    # semantic match with no shared content word: only the vector side can find it
    hits = mos.search("beverage", "alice", top_k=1)
    assert hits[0].item.text == "Alice's favourite drink is green tea"
    assert hits[0].ranks == {"vector": 1}


def test_search_updates_access_statistics(mos: MemOS) -> None:
    items = _chat(mos)
    hit = mos.search("beagle", "alice", top_k=1)[0]
    assert hit.item.id == items[0].id
    assert mos.get(items[0].id).stats.access_count == 1
    mos.search("beagle", "alice", top_k=1, record_access=False)
    assert mos.get(items[0].id).stats.access_count == 1


def test_search_filters(mos: MemOS) -> None:
    _chat(mos)
    mos.add("alice", "Alice climbs at the Boulder Hall on Fridays", memory_type="event",
            tags=["sport"], session="s2", valid_from=datetime(2023, 7, 1, tzinfo=UTC))
    q = "climbing"
    assert {h.item.memory_type for h in mos.search(q, "alice", filters={
        "memory_types": ["event"]})} == {MemoryType.EVENT}
    assert all(h.item.source.session == "s1"
               for h in mos.search(q, "alice", filters={"session": "s1"}))
    assert [h.item.tags for h in mos.search(q, "alice", filters={"tags": ["sport"]})] == [
        ["sport"]]
    # the assistant's message carries no timestamp: its event time is when it was stored
    since = mos.search(q, "alice", filters={"since": datetime(2023, 6, 1, tzinfo=UTC),
                                            "until": datetime(2024, 1, 1, tzinfo=UTC)})
    assert [h.item.memory_type for h in since] == [MemoryType.EVENT]
    assert mos.search(q, "alice", filters={"user": "nobody"}) == []
    with pytest.raises(ValidationError, match="memory types"):
        mos.search(q, "alice", filters={"memory_types": ["feelings"]})
    with pytest.raises(ValidationError, match="bad filters"):
        mos.search(q, "alice", filters={"colour": "red"})


def test_search_across_cubes(mos: MemOS) -> None:
    _chat(mos)
    mos.create_cube("bob")
    mos.add("bob", "Bob owns a beagle too")
    both = mos.search("beagle", ["alice", "bob"], top_k=5)
    assert {h.item.cube_id for h in both} == {mos.get_cube("alice").id, mos.get_cube("bob").id}
    assert {h.item.cube_id for h in mos.search("beagle", "bob")} == {mos.get_cube("bob").id}


def test_update_history_and_rollback(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", "The office is in Berlin", tags=["work"])
    v2 = mos.update(item.id, text="The office is in Munich")
    v3 = mos.update(item.id, tags=["work", "location"])
    assert (v2.version, v3.version) == (2, 3)
    assert mos.search("Munich", "c", top_k=1)[0].item.id == item.id
    assert mos.search("Berlin", "c", top_k=1)[0].ranks.get("bm25") is None
    history = mos.history(item.id)
    assert [(r.item.version, r.op, r.item.text) for r in history] == [
        (1, "add", "The office is in Berlin"),
        (2, "update", "The office is in Munich"),
        (3, "update", "The office is in Munich"),
    ]
    back = mos.rollback(item.id, 1)
    assert back.version == 4 and back.text == "The office is in Berlin"
    assert back.tags == ["work"]
    assert mos.search("Berlin", "c", top_k=1)[0].ranks.get("bm25") == 1
    assert len(mos.history(item.id)) == 4
    with pytest.raises(NotFoundError):
        mos.rollback(item.id, 99)
    with pytest.raises(ConflictError):
        mos.update(item.id, text="stale", expected_version=2)
    assert mos.get(item.id).text == "The office is in Berlin"


def test_soft_delete_then_restore(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", "Parking spot number 42")
    deleted = mos.delete(item.id)
    assert deleted.state == MemoryState.DELETED
    assert mos.search("parking spot", "c") == []
    assert [h.item.id for h in mos.search("parking spot", "c",
                                          filters={"states": ["deleted"]})] == [item.id]
    restored = mos.rollback(item.id, 1)
    assert restored.state == MemoryState.ACTIVE
    assert [h.item.id for h in mos.search("parking spot", "c")] == [item.id]


def test_purge_erases(mos: MemOS) -> None:
    mos.create_cube("c")
    [item, other] = mos.add("c", messages=[{"content": "my passport is X1234567"},
                                          {"content": "the weather is fine"}])
    assert mos.purge([item.id]) == 1
    with pytest.raises(NotFoundError):
        mos.get(item.id)
    with pytest.raises(NotFoundError):
        mos.history(item.id)
    assert all(h.item.id != item.id for h in mos.search("passport", "c",
                                                        filters={"states": []}))
    with pytest.raises(NotFoundError):
        mos.purge([item.id])
    assert mos.get(other.id).text == "the weather is fine"


def test_cube_snapshot_and_rollback(mos: MemOS) -> None:
    mos.create_cube("c")
    [a, b] = mos.add("c", messages=[{"content": "alpha one"}, {"content": "beta one"}])
    snap = mos.snapshot("c", "baseline")
    mos.update(a.id, text="alpha two")
    mos.delete(b.id)
    [c] = mos.add("c", "gamma one")
    changed = mos.rollback_cube("c", snap)
    assert {i.id for i in changed} == {a.id, b.id, c.id}
    assert mos.get(a.id).text == "alpha one"
    assert mos.get(b.id).state == MemoryState.ACTIVE
    assert mos.get(c.id).state == MemoryState.DELETED
    assert {h.item.text for h in mos.search("one", "c", top_k=10)} == {"alpha one", "beta one"}
    assert mos.rollback_cube("c", snap.clock) == []  # already there: nothing written
    # the rollback is itself versioned, so it can be undone
    after_edits = mos.vault.list_snapshots(mos.get_cube("c").id)[0].clock + 3
    mos.rollback_cube("c", after_edits)
    assert mos.get(a.id).text == "alpha two"
    assert mos.get(b.id).state == MemoryState.DELETED
    assert mos.get(c.id).state == MemoryState.ACTIVE
    assert [s.label for s in mos.snapshots("c")] == ["baseline"]


def test_bad_input_is_a_typed_error_and_writes_nothing(mos: MemOS) -> None:
    mos.create_cube("c")
    bad_calls = [
        lambda: mos.add("c", ""),
        lambda: mos.add("c", "   "),
        lambda: mos.add("c", 42),  # type: ignore[arg-type]
        lambda: mos.add("c", "x", memory_type="gossip"),
        lambda: mos.add("c", "x", tags=["a,b"]),
        lambda: mos.add("c", "x", tags="solo"),  # type: ignore[arg-type]
        lambda: mos.add("c", "x", visibility="everyone"),
        lambda: mos.add("c", messages=[{"content": "ok"}, {"content": ""}]),
        lambda: mos.add("c", messages=[{"content": "ok"}, "not a dict"]),
        lambda: mos.add("c", messages=[{"content": "ok", "mood": "happy"}]),
        lambda: mos.add("c", "x", messages=[{"content": "y"}]),
        lambda: mos.add("c", "x", valid_from=datetime(2024, 1, 2),
                        valid_to=datetime(2024, 1, 1)),
        lambda: mos.add("c", "x" * 200_001),
        lambda: mos.search("", "c"),
        lambda: mos.search("x", "c", top_k=0),
        lambda: mos.search("x", "c", top_k="5"),  # type: ignore[arg-type]
        lambda: mos.create_cube("bad name!"),
    ]
    for call in bad_calls:
        with pytest.raises(ValidationError) as info:
            call()
        assert str(info.value)
    assert mos.stats("c")["cubes"][0]["items"] == 0
    [item] = mos.add("c", "fine")
    with pytest.raises(ValidationError, match="cannot update"):
        mos.update(item.id, version=7)
    with pytest.raises(ValidationError, match="text"):
        mos.update(item.id, text="")
    with pytest.raises(NotFoundError):
        mos.get("no-such-id")
    with pytest.raises(NotFoundError):
        mos.update("no-such-id", text="x")
    with pytest.raises(NotFoundError):
        mos.add("no-such-cube", "x")
    with pytest.raises(ConflictError):
        mos.create_cube("c")
    assert mos.get(item.id).version == 1


def test_embedder_mismatch_is_an_error_until_reembedded(home, embedder) -> None:
    with MemOS(Settings.load(home), embedder=embedder) as mos:
        mos.create_cube("c")
        [item] = mos.add("c", "the cat is asleep on the sofa")
    other = make_embedder("use-multilingual")
    with MemOS(Settings.load(home), embedder=other) as mos:
        with pytest.raises(EmbedderMismatchError, match="reembed"):
            mos.search("cat", "c")
        with pytest.raises(EmbedderMismatchError):
            mos.add("c", "more")
        assert mos.get(item.id).text == "the cat is asleep on the sofa"  # reads still work
        assert mos.reembed("c") == 1
        assert mos.get_cube("c").config.embedding_dim == 512
        assert mos.search("cat", "c")[0].item.id == item.id
    with MemOS(Settings.load(home), embedder=embedder) as mos, pytest.raises(
            EmbedderMismatchError):
        mos.search("cat", "c")


def test_feedback(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", "useful fact")
    mos.feedback(item.id, 1)
    mos.feedback(item.id, -0.5)
    assert mos.get(item.id).stats.feedback_score == 0.5
    with pytest.raises(ValidationError):
        mos.feedback(item.id, "lots")  # type: ignore[arg-type]
