"""Lifecycle: frozen/archived states, TTL and decay with reports, the review queue and
feedback kinds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from memosys.errors import ConflictError, ValidationError
from memosys.operation.lifecycle import DecayPolicy, heat
from memosys.system import MemOS
from memosys.types import MemoryItem, MemoryState


def _aged(mos: MemOS, cube: str, text: str, days: float, **fields) -> MemoryItem:
    created = datetime.now(UTC) - timedelta(days=days)
    item = MemoryItem(cube_id=mos.get_cube(cube).id, text=text, created_at=created,
                      updated_at=created, **fields)
    return mos.add_items(cube, [item])[0]


def test_frozen_memories_are_kept_but_not_retrieved_by_default(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", "the office wifi password changes monthly")
    mos.lifecycle.freeze(item.id)
    assert mos.search("office wifi", "c") == []
    hits = mos.search("office wifi", "c", filters={"states": ["frozen"]})
    assert [h.item.id for h in hits] == [item.id]
    assert mos.lifecycle.restore(item.id).state == MemoryState.ACTIVE
    assert mos.search("office wifi", "c")[0].item.id == item.id


def test_ttl_per_memory_and_per_type_delete_and_report(mos: MemOS) -> None:
    mos.create_cube("c")
    [short] = mos.add("c", "parking spot 14 is mine today")
    mos.lifecycle.set_ttl(short.id, 60)
    episode = _aged(mos, "c", "Alice: see you at the station", 2, memory_type="episode")
    [fact] = mos.add("c", "Alice's birthday is in June")
    mos.set_cube_policy("c", ttl={"episode": 86400})
    later = datetime.now(UTC) + timedelta(minutes=5)
    dry = mos.lifecycle.run("c", now=later, dry_run=True)
    assert {t.item_id for t in dry.transitions} == {short.id, episode.id}
    assert mos.get(short.id).state == MemoryState.ACTIVE  # a dry run changes nothing
    report = mos.lifecycle.run("c", now=later)
    moved = {t.item_id: t for t in report.transitions}
    assert set(moved) == {short.id, episode.id}
    assert moved[short.id].to_state == "deleted" and "its TTL" in moved[short.id].reason
    assert "TTL for episode" in moved[episode.id].reason
    assert mos.get(short.id).state == MemoryState.DELETED
    assert mos.get(fact.id).state == MemoryState.ACTIVE
    assert [h.op for h in mos.history(short.id)][-1] == "update"  # versioned, reversible


def test_decay_archives_cold_memories_and_says_why(mos: MemOS) -> None:
    mos.create_cube("c")
    cold = _aged(mos, "c", "the printer on floor 3 jammed once", 200)
    warm = _aged(mos, "c", "the team standup is at 9:30", 200)
    rule = _aged(mos, "c", "always answer in English", 200, memory_type="rule")
    young = _aged(mos, "c", "lunch moved to 12:30 this week", 1)
    for _ in range(3):
        mos.search("team standup", "c", top_k=1)
    mos.feedback(warm.id, "useful")
    mos.set_cube_policy("c", decay={"half_life_days": 30, "archive_below": 0.05})
    report = mos.lifecycle.run("c", now=datetime.now(UTC))
    assert [t.item_id for t in report.transitions] == [cold.id]
    [t] = report.transitions
    assert (t.from_state, t.to_state) == ("active", "archived")
    assert t.heat is not None and t.heat < 0.05
    assert "idle 200 days" in t.reason and "0 accesses" in t.reason
    states = {i: mos.get(i).state for i in (cold.id, warm.id, rule.id, young.id)}
    assert states == {cold.id: MemoryState.ARCHIVED, warm.id: MemoryState.ACTIVE,
                      rule.id: MemoryState.ACTIVE, young.id: MemoryState.ACTIVE}
    assert cold.id not in {h.item.id for h in mos.search("printer jammed", "c")}


def test_heat_is_recency_times_frequency_times_feedback() -> None:
    now = datetime.now(UTC)
    base = MemoryItem(cube_id="c", text="x", created_at=now, updated_at=now)
    policy = DecayPolicy(half_life_days=10)
    assert heat(base, now, policy) == pytest.approx(1.0)
    old = base.model_copy(update={"updated_at": now - timedelta(days=10)})
    assert heat(old, now, policy) == pytest.approx(0.5)
    used = base.model_copy(update={"stats": base.stats.model_copy(update={
        "access_count": 4, "feedback_score": -1.0})})
    assert heat(used, now, policy) == pytest.approx((1 + 1.6094379) * 0.5, rel=1e-4)
    with pytest.raises(ValidationError):
        DecayPolicy.from_dict({"half_life_days": 0})


def test_feedback_kinds_feed_the_score_and_correct(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", "the gym opens at 6")
    assert mos.feedback(item.id, 0.5) is None  # the old numeric form still works
    mos.feedback(item.id, "useful")
    assert mos.get(item.id).stats.feedback_score == 1.5
    fixed = mos.feedback(item.id, "wrong", "it opens at 7 now", correction="the gym opens at 7")
    assert fixed is not None and fixed.version == 2 and fixed.text == "the gym opens at 7"
    assert fixed.metadata["feedback"][0]["note"] == "it opens at 7 now"
    assert mos.get(item.id).stats.feedback_score == -0.5
    outdated = mos.feedback(item.id, "outdated")
    assert outdated is not None and outdated.state == MemoryState.INVALIDATED
    with pytest.raises(ValidationError):
        mos.feedback(item.id, "meh")
    with pytest.raises(ValidationError):
        mos.feedback(item.id, "useful", correction="x")


def test_wrong_feedback_goes_to_review_and_approval_deletes(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", "the moon is made of cheese")
    mos.feedback(item.id, "wrong")
    [entry] = mos.lifecycle.review_queue("c")
    assert (entry.kind, entry.item_id) == ("feedback", item.id)
    done = mos.lifecycle.resolve(entry.id, "approve")
    assert done.state == "approved" and mos.get(item.id).state == MemoryState.DELETED
    with pytest.raises(ConflictError):
        mos.lifecycle.resolve(entry.id, "reject")


def test_contradictions_are_queued_and_rejecting_restores_the_old_memory(mos: MemOS) -> None:
    mos.create_cube("alice", owner="alice")
    when = "2023-03-01T09:00:00Z"
    first = mos.add("alice", messages=[{"role": "user", "name": "Alice", "timestamp": when,
                                        "content": "I prefer tea over coffee."}], infer=True)
    tea_id = first.result.decisions[0].item_id
    second = mos.add("alice", messages=[{"role": "user", "name": "Alice",
                                         "timestamp": "2023-06-01T09:00:00Z",
                                         "content": "I now prefer coffee in the mornings."}],
                     infer=True)
    coffee_id = second.result.decisions[0].item_id
    report = mos.lifecycle.run("alice")
    [entry] = report.reviews_added
    assert (entry.kind, entry.item_id, entry.related_ids) == (
        "contradiction", coffee_id, (tea_id,))
    assert mos.lifecycle.run("alice").reviews_added == []  # queued once
    mos.lifecycle.resolve(entry.id, "reject")
    assert mos.get(coffee_id).state == MemoryState.DELETED
    assert mos.get(tea_id).state == MemoryState.ACTIVE
    assert mos.lifecycle.run("alice").reviews_added == []  # resolved stays resolved


def test_low_confidence_extractions_are_queued(mos: MemOS) -> None:
    mos.create_cube("c")
    item = MemoryItem(cube_id=mos.get_cube("c").id, text="Bob might like sushi",
                      metadata={"reader": {"op": "add", "confidence": 0.3}})
    [stored] = mos.add_items("c", [item])
    [entry] = mos.lifecycle.run("c").reviews_added
    assert entry.kind == "low_confidence" and entry.item_id == stored.id
    mos.lifecycle.resolve(entry.id, "reject")
    assert mos.get(stored.id).state == MemoryState.DELETED


def test_lifecycle_respects_permissions(mos: MemOS) -> None:
    mos.create_user("ola", role="owner")
    mos.create_user("per", role="owner")
    ola = mos.as_actor(mos.authenticate(mos.create_api_key("ola")[1]))
    per = mos.as_actor(mos.authenticate(mos.create_api_key("per")[1]))
    ola.create_cube("ola-cube")
    _aged(ola, "ola-cube", "an old note nobody reads", 300)
    assert per.lifecycle.run().transitions == []  # never touches cubes it cannot write
    assert len(ola.lifecycle.run().transitions) == 1
