"""The semantic graph in the storage contract: both backends, the same tests.

A small hand-made conversation with known entities and relations goes in through
`vault.commit` with the LLM-free deriver installed; edits, deletes, rollbacks and purges
must change the graph in the same write, and a rebuild must give the same graph again.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from helpers import make_cube, make_item, unit_vectors
from memosys.infra.vault.base import Vault, Write
from memosys.infra.vault.graph_base import EntityType
from memosys.operation.graph_extract import extract_graph
from memosys.types import MemoryItem, MemoryState, MemoryType, Source

JAN = datetime(2023, 1, 10, tzinfo=UTC)
JUN = datetime(2023, 6, 1, tzinfo=UTC)

CONVERSATION = [
    ("s1", JAN, "Caroline", "I live in Boston and I work at Sunrise Adoption Agency."),
    ("s1", JAN, "Melanie", "That's great! My husband John and I went to Lake Tahoe."),
    ("s1", JAN, "Caroline", "My sister is visiting next week."),
    ("s1", JAN, "Caroline", "My sister Anna loves hiking with me."),
    ("s2", JUN, "Caroline", "Big news: I moved to Denver last month."),
    ("s2", JUN, "Melanie", "How is Anna doing?"),
]


def _turn(cube, session: str, at: datetime, speaker: str, text: str) -> MemoryItem:
    return make_item(cube, f"{speaker}: {text}", memory_type=MemoryType.EPISODE,
                     valid_from=at, metadata={"speaker": speaker},
                     source=Source(session=session, role="user"))


@pytest.fixture
def conv(vault: Vault):
    vault.set_graph_deriver(extract_graph)
    cube = vault.create_cube(make_cube("conv"))
    items = [_turn(cube, *t) for t in CONVERSATION]
    vecs = unit_vectors(len(items))
    stored = []
    for item, vec in zip(items, vecs, strict=True):  # one commit per turn, as chat arrives
        stored.extend(vault.commit(cube.id, [Write(item, "add", None, vec)]))
    return vault, cube, stored


def _find(vault: Vault, cube, name: str):
    return vault.graph_find(cube.id, [name]).get(name)


def _snapshot(vault: Vault, cube) -> tuple:
    entities = sorted((e.id, e.name, e.type.value, e.mentions, e.aliases)
                      for e in vault.graph_entities(cube.id, limit=1000))
    relations = sorted((r.subject.name, r.predicate, r.object.name, r.valid_from, r.valid_to,
                        r.sources) for r in vault.graph_relations(cube.id))
    return entities, relations, vault.graph_stats(cube.id)


def test_extraction_and_resolution(conv) -> None:
    vault, cube, items = conv
    names = {e.name: e for e in vault.graph_entities(cube.id, limit=100)}
    for name, etype in (("Caroline", "person"), ("Melanie", "person"), ("Boston", "place"),
                        ("Sunrise Adoption Agency", "organisation"), ("John", "person"),
                        ("Lake Tahoe", "place"), ("Anna", "person"), ("Denver", "place")):
        assert name in names, sorted(names)
        assert names[name].type == EntityType(etype)
    # "my sister" (before her name was known) was resolved to Anna once the conversation
    # said who she is: no placeholder is left, and that memory mentions Anna.
    assert "Caroline's sister" not in names
    anna = names["Anna"]
    mentioning = vault.graph_mentioning([anna.id])[anna.id]
    assert {items[2].id, items[3].id, items[5].id} <= set(mentioning)
    assert "Caroline's sister" in anna.aliases
    # case and possessives do not make other entities
    assert _find(vault, cube, "caroline's").id == names["Caroline"].id
    caroline = names["Caroline"]
    rel = {(r.predicate, r.object.name) for r in vault.graph_relations(cube.id, caroline.id)
           if r.subject.id == caroline.id}
    assert {("lives_in", "Boston"), ("lives_in", "Denver"), ("works_at",
            "Sunrise Adoption Agency"), ("sister", "Anna")} <= rel
    melanie = names["Melanie"]
    assert vault.graph_role(cube.id, melanie.id, "husband").name == "John"
    sister = [r for r in vault.graph_relations(cube.id, anna.id) if r.predicate == "sister"][0]
    assert sister.sources == ((items[3].id, 1),)


def test_contradicted_relation_gets_valid_to_and_as_of_answers_both_dates(conv) -> None:
    vault, cube, items = conv
    caroline = _find(vault, cube, "Caroline")
    lives = vault.graph_relations(cube.id, caroline.id, predicate="lives_in")
    by_place = {r.object.name: r for r in lives}
    assert by_place["Boston"].valid_from == JAN and by_place["Boston"].valid_to == JUN
    assert by_place["Denver"].valid_from == JUN and by_place["Denver"].valid_to is None

    def lives_at(day: datetime) -> list[str]:
        return [r.object.name for r in vault.graph_relations(
            cube.id, caroline.id, predicate="lives_in", as_of=day)]

    assert lives_at(datetime(2023, 3, 1, tzinfo=UTC)) == ["Boston"]
    assert lives_at(datetime(2023, 7, 1, tzinfo=UTC)) == ["Denver"]
    assert lives_at(datetime(2022, 7, 1, tzinfo=UTC)) == []


def test_delete_and_rollback_update_the_graph(conv) -> None:
    vault, cube, items = conv
    denver_turn = items[4]
    deleted = denver_turn.model_copy(update={"state": MemoryState.DELETED})
    [v2] = vault.commit(cube.id, [Write(deleted, "delete", 1)])
    assert _find(vault, cube, "Denver") is None  # nobody mentions it any more
    caroline = _find(vault, cube, "Caroline")
    boston = vault.graph_relations(cube.id, caroline.id, predicate="lives_in")
    assert [(r.object.name, r.valid_to) for r in boston] == [("Boston", None)]
    # rollback: the memory is active again, and so are its edges
    restored = v2.model_copy(update={"state": MemoryState.ACTIVE})
    [v3] = vault.commit(cube.id, [Write(restored, "rollback", 2)])
    lives = vault.graph_relations(cube.id, caroline.id, predicate="lives_in")
    assert [(r.object.name, r.valid_to) for r in lives] == [("Boston", JUN), ("Denver", None)]
    assert [r.sources for r in lives][1] == ((denver_turn.id, 3),)


def test_edit_replaces_the_edges_of_the_old_text(conv) -> None:
    vault, cube, items = conv
    edited = items[4].model_copy(update={"text": "Caroline: Big news: I moved to Austin."})
    vault.commit(cube.id, [Write(edited, "update", 1, unit_vectors(1, seed=5)[0])])
    assert _find(vault, cube, "Denver") is None
    caroline = _find(vault, cube, "Caroline")
    assert [r.object.name for r in vault.graph_relations(
        cube.id, caroline.id, predicate="lives_in", as_of=JUN)] == ["Austin"]


def test_purge_leaves_no_entity_or_edge_with_the_purged_text(conv) -> None:
    vault, cube, items = conv
    first = items[0]
    assert vault.graph_follows(items[1].id) == (first.id, items[2].id)
    assert vault.purge([first.id]) == 1
    for gone in ("Boston", "Sunrise Adoption Agency"):
        assert _find(vault, cube, gone) is None
        assert vault.graph_entities(cube.id, prefix=gone[:4]) == []
    caroline = _find(vault, cube, "Caroline")
    assert [r.object.name for r in vault.graph_relations(
        cube.id, caroline.id, predicate="lives_in")] == ["Denver"]
    assert all(r.sources[0][0] != first.id for r in vault.graph_relations(cube.id))
    assert vault.graph_memory_entities([first.id]) == {}
    assert vault.graph_follows(items[1].id) == (None, items[2].id)
    assert vault.graph_follows(first.id) == (None, None)


def test_rebuild_is_idempotent_and_matches_incremental(conv) -> None:
    vault, cube, _ = conv
    incremental = _snapshot(vault, cube)
    vault.graph_rebuild(cube.id)
    rebuilt = _snapshot(vault, cube)
    vault.graph_rebuild(cube.id)
    assert _snapshot(vault, cube) == rebuilt
    assert rebuilt[0] == incremental[0] and rebuilt[2] == incremental[2]
    assert [r[:5] for r in rebuilt[1]] == [r[:5] for r in incremental[1]]


def test_neighbours_path_follows_and_derived(conv) -> None:
    vault, cube, items = conv
    caroline, anna, boston = (_find(vault, cube, n) for n in ("Caroline", "Anna", "Boston"))
    near = {n.entity.name: n for n in vault.graph_neighbours(cube.id, caroline.id, hops=1)}
    assert near["Anna"].via == "sister" and near["Anna"].hops == 1
    two = {n.entity.name: n.hops for n in vault.graph_neighbours(
        cube.id, boston.id, hops=2, co_mentions=False)}
    assert two["Caroline"] == 1 and two["Anna"] == 2 and two["Denver"] == 2
    path = vault.graph_path(cube.id, boston.id, anna.id)
    assert [(e.name, p) for e, p in path] == [("Boston", ""), ("Caroline", "lives_in"),
                                              ("Anna", "sister")]
    assert vault.graph_path(cube.id, boston.id, _find(vault, cube, "John").id,
                            max_hops=1) is None
    # FOLLOWS: session order; DERIVED_FROM: provenance of an extracted fact
    assert vault.graph_follows(items[0].id) == (None, items[1].id)
    assert vault.graph_follows(items[4].id)[0] is None  # first of its session
    fact = make_item(cube, "Caroline's sister is Anna.", memory_type=MemoryType.FACT,
                     derived_from=[items[3].id], valid_from=JAN)
    vault.commit(cube.id, [Write(fact, "add", None, unit_vectors(1, seed=3)[0])])
    assert vault.graph_derived(fact.id) == ([items[3].id], [])
    assert vault.graph_derived(items[3].id) == ([], [fact.id])
    stats = vault.graph_stats(cube.id)
    assert stats.derived == 1 and stats.follows == 4 and stats.entities >= 8


def _star_deriver(item: MemoryItem):
    from memosys.infra.vault.graph_base import EntityRef, MemoryGraph, RelationRef

    s, p, o = item.text.split()
    return MemoryGraph([EntityRef(s, EntityType.PERSON), EntityRef(o, EntityType.PERSON)],
                       [RelationRef(s, p, o, confidence=0.9)])


def test_walks_do_not_go_through_hubs(vault: Vault) -> None:
    vault.set_graph_deriver(_star_deriver)
    cube = vault.create_cube(make_cube("star"))
    texts = ["Ann knows Hub", "Bea knows Hub", "Cid knows Hub", "Dan knows Hub", "Ann likes Xia",
             "Xia likes Yan"]
    vecs = unit_vectors(len(texts))
    for text, vec in zip(texts, vecs, strict=True):
        vault.commit(cube.id, [Write(make_item(cube, text), "add", None, vec)])
    ann, hub = _find(vault, cube, "Ann"), _find(vault, cube, "Hub")
    assert vault.graph_degrees(cube.id, [hub.id, ann.id]) == {hub.id: 4, ann.id: 2}
    cut = {n.entity.name: n.hops for n in vault.graph_neighbours(
        cube.id, ann.id, hops=2, co_mentions=False, max_degree=3)}
    assert cut == {"Hub": 1, "Xia": 1, "Yan": 2}  # reached the hub, not walked through it
    full = {n.entity.name: n.hops for n in vault.graph_neighbours(
        cube.id, ann.id, hops=2, co_mentions=False, max_degree=None)}
    assert full == {"Hub": 1, "Xia": 1, "Yan": 2, "Bea": 2, "Cid": 2, "Dan": 2}
    # the hub itself is walked when it is where the walk starts
    assert len(vault.graph_neighbours(cube.id, hub.id, hops=1, co_mentions=False,
                                      max_degree=3)) == 4
    # weights: the product of confidences along the path
    near = {n.entity.name: n for n in vault.graph_neighbours(cube.id, ann.id, hops=2,
                                                               co_mentions=False)}
    assert abs(near["Yan"].weight - 0.81) < 1e-6


def test_a_role_whose_owner_left_the_batch_resolves_afresh(conv) -> None:
    """An owner id the batch cached can be gone (merged away or collected); "my sister"
    then resolves against the owner's name again instead of failing the write."""
    from memosys.infra.vault.graph_base import EntityRef
    from memosys.infra.vault.graph_writes import _Resolver

    vault, cube, _ = conv
    with vault._graph_write() as db:
        resolver = _Resolver(db, cube.id)
        resolver.cache[EntityRef("Caroline", EntityType.PERSON).key] = "e-gone"
        sister = resolver.resolve(EntityRef("sister", EntityType.PERSON, owner="Caroline",
                                            role="sister"))
    assert sister == _find(vault, cube, "Anna").id  # Caroline's sister, as she said
