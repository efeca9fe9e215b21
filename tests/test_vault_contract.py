"""The storage contract, written against `Vault` only: every backend must pass it."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from helpers import DIM, make_cube, make_item, unit_vectors
from memosys.errors import ConflictError, NotFoundError, ValidationError
from memosys.infra.vault.base import ItemFilter, Vault, Write
from memosys.types import MemoryState, MemoryType, Source


def _add(vault: Vault, cube, texts: list[str], seed: int = 0, **fields):
    vecs = unit_vectors(len(texts), seed=seed)
    writes = [Write(make_item(cube, t, **fields), "add", None, v)
              for t, v in zip(texts, vecs, strict=True)]
    return vault.commit(cube.id, writes)


def test_cube_create_get_list_and_duplicate_name(vault: Vault) -> None:
    cube = vault.create_cube(make_cube("alpha"))
    assert vault.get_cube("alpha").id == cube.id
    assert vault.get_cube(cube.id).name == "alpha"
    assert [c.name for c in vault.list_cubes()] == ["alpha"]
    with pytest.raises(ConflictError):
        vault.create_cube(make_cube("alpha"))
    with pytest.raises(NotFoundError):
        vault.get_cube("nope")


def test_commit_assigns_versions_and_advances_clock(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    [item] = _add(vault, cube, ["first text"])
    assert item.version == 1
    assert vault.get_cube(cube.id).clock == 1
    changed = item.model_copy(update={"text": "second text"})
    [v2] = vault.commit(cube.id, [Write(changed, "update", 1, unit_vectors(1, seed=9)[0])])
    assert v2.version == 2
    assert vault.get_many([item.id])[item.id].text == "second text"
    assert [(r.item.version, r.item.text, r.op) for r in vault.history(item.id)] == [
        (1, "first text", "add"), (2, "second text", "update")]
    assert vault.get_cube(cube.id).clock == 2


def test_stale_write_is_rejected_and_changes_nothing(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    [item] = _add(vault, cube, ["original"])
    vault.commit(cube.id, [Write(item.model_copy(update={"text": "a"}), "update", 1)])
    with pytest.raises(ConflictError):
        vault.commit(cube.id, [Write(item.model_copy(update={"text": "b"}), "update", 1)])
    assert vault.get_many([item.id])[item.id].text == "a"
    assert len(vault.history(item.id)) == 2


def test_batch_is_atomic(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    [item] = _add(vault, cube, ["kept"])
    fresh = make_item(cube, "should not appear")
    duplicate = Write(item, "add", None, unit_vectors(1)[0])  # create of an existing id
    with pytest.raises(ConflictError):
        vault.commit(cube.id, [Write(fresh, "add", None, unit_vectors(1)[0]), duplicate])
    assert vault.get_many([fresh.id]) == {}
    assert vault.get_cube(cube.id).clock == 1


def test_new_item_needs_vector_of_the_cube_dimension(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    with pytest.raises(ValidationError):
        vault.commit(cube.id, [Write(make_item(cube, "x"), "add", None, None)])
    with pytest.raises(ValidationError):
        vault.commit(cube.id, [Write(make_item(cube, "x"), "add", None, np.ones(DIM + 1))])
    assert vault.count(ItemFilter(cube_ids=(cube.id,), states=())) == 0


def test_unknown_ids(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    assert vault.get_many(["missing"]) == {}
    assert vault.history("missing") == []
    ghost = make_item(cube, "ghost")
    with pytest.raises(NotFoundError):
        vault.commit(cube.id, [Write(ghost, "update", 1, unit_vectors(1)[0])])


def test_filters(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    other = vault.create_cube(make_cube("c2"))
    may = datetime(2023, 5, 8, tzinfo=UTC)
    june = datetime(2023, 6, 1, tzinfo=UTC)
    _add(vault, cube, ["a pref"], memory_type=MemoryType.PREFERENCE, tags=["food", "x"],
         source=Source(user="u1", session="s1"), valid_from=may)
    _add(vault, cube, ["an event"], memory_type=MemoryType.EVENT, tags=["food"],
         source=Source(user="u2", session="s2"), valid_from=june)
    _add(vault, other, ["elsewhere"], source=Source(user="u1"))

    def texts(**kw) -> set[str]:
        return {i.text for i in vault.list_items(ItemFilter(**kw))}

    assert texts(cube_ids=(cube.id,)) == {"a pref", "an event"}
    assert texts(user="u1") == {"a pref", "elsewhere"}
    assert texts(cube_ids=(cube.id,), session="s2") == {"an event"}
    assert texts(memory_types=(MemoryType.PREFERENCE,)) == {"a pref"}
    assert texts(tags=("food",)) == {"a pref", "an event"}
    assert texts(tags=("food", "x")) == {"a pref"}
    assert texts(cube_ids=(cube.id,), since=datetime(2023, 5, 20, tzinfo=UTC)) == {"an event"}
    assert texts(cube_ids=(cube.id,), until=datetime(2023, 5, 20, tzinfo=UTC)) == {"a pref"}
    assert vault.count(ItemFilter(cube_ids=(cube.id,))) == 2


def test_states_and_valid_at(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    jan, mar, may = (datetime(2024, m, 1, tzinfo=UTC) for m in (1, 3, 5))
    [old] = _add(vault, cube, ["lives in Paris"], valid_from=jan)
    vault.commit(cube.id, [Write(old.model_copy(update={
        "valid_to": mar, "state": MemoryState.INVALIDATED}), "invalidate", 1)])
    _add(vault, cube, ["lives in Rome"], valid_from=mar)
    assert {i.text for i in vault.list_items(ItemFilter(cube_ids=(cube.id,)))} == {
        "lives in Rome"}
    every_state = ItemFilter(cube_ids=(cube.id,), states=())
    assert {i.text for i in vault.list_items(every_state)} == {"lives in Paris", "lives in Rome"}
    at_feb = ItemFilter(cube_ids=(cube.id,), states=(), valid_at=datetime(2024, 2, 1, tzinfo=UTC))
    assert {i.text for i in vault.list_items(at_feb)} == {"lives in Paris"}
    at_may = ItemFilter(cube_ids=(cube.id,), states=(), valid_at=may)
    assert {i.text for i in vault.list_items(at_may)} == {"lives in Rome"}


def test_text_search_ranks_and_filters(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    _add(vault, cube, ["the cat sat on the mat", "dogs chase cats in the park",
                       "quarterly revenue grew", 'odd "quotes" AND NEAR(syntax)'])
    hits = vault.search_text("cat", ItemFilter(cube_ids=(cube.id,)), 10)
    assert [vault.get_many([i])[i].text for i, _ in hits][0] == "the cat sat on the mat"
    assert len(hits) == 2  # porter stemming: "cats" matches "cat"
    assert hits[0][1] >= hits[1][1]
    # user text never reaches FTS5 as syntax
    assert vault.search_text('"quotes" AND NEAR(', ItemFilter(cube_ids=(cube.id,)), 5)
    assert vault.search_text("???", ItemFilter(cube_ids=(cube.id,)), 5) == []
    assert vault.search_text("cat", ItemFilter(cube_ids=("other",)), 5) == []


def test_text_scores_use_the_searched_cube_statistics_only(vault: Vault) -> None:
    """BM25's idf and average length come from the searched cube: another cube's words,
    however many, change neither the scores nor the order of this cube's results."""
    mine = vault.create_cube(make_cube("mine"))
    _add(vault, mine, ["the garden has roses", "roses and tulips in the garden",
                       "a long walk along the river to see the garden"])
    flt = ItemFilter(cube_ids=(mine.id,))
    before = vault.search_text("garden roses", flt, 10)
    other = vault.create_cube(make_cube("other"))
    _add(vault, other, [f"garden note {i} about a rose garden, garden and garden"
                        for i in range(40)], seed=3)
    after = vault.search_text("garden roses", flt, 10)
    assert [i for i, _ in after] == [i for i, _ in before]
    assert [s for _, s in after] == pytest.approx([s for _, s in before], rel=1e-9)
    both = vault.search_text("garden roses", ItemFilter(cube_ids=(mine.id, other.id)), 50)
    assert {i for i, _ in before} <= {i for i, _ in both} and len(both) == 43


def test_vector_search_exact_and_filtered(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    items = _add(vault, cube, [f"item {i}" for i in range(30)], seed=3)
    vecs = unit_vectors(30, seed=3)
    hits = vault.search_vector(vecs[7], ItemFilter(cube_ids=(cube.id,)), 5)
    assert hits[0][0] == items[7].id
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    only = ItemFilter(cube_ids=(cube.id,), ids=(items[3].id, items[4].id))
    assert {i for i, _ in vault.search_vector(vecs[7], only, 5)} == {items[3].id, items[4].id}


def test_vector_search_follows_updates_and_deletes(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    items = _add(vault, cube, ["a", "b", "c"], seed=4)
    vecs = unit_vectors(3, seed=4)
    flt = ItemFilter(cube_ids=(cube.id,))
    assert vault.search_vector(vecs[0], flt, 1)[0][0] == items[0].id
    # item b now carries a's old vector; a gets a new one
    vault.commit(cube.id, [Write(items[1].model_copy(update={"text": "b2"}), "update", 1,
                                 vecs[0])])
    vault.commit(cube.id, [Write(items[0].model_copy(update={"text": "a2"}), "update", 1,
                                 unit_vectors(1, seed=99)[0])])
    assert vault.search_vector(vecs[0], flt, 1)[0][0] == items[1].id
    vault.commit(cube.id, [Write(items[2].model_copy(update={"state": MemoryState.DELETED}),
                                 "delete", 1)])
    assert items[2].id not in {i for i, _ in vault.search_vector(vecs[2], flt, 3)}
    vault.purge([items[1].id])
    assert items[1].id not in {i for i, _ in vault.search_vector(vecs[0], flt, 3)}


def test_changes_since(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    [a] = _add(vault, cube, ["a v1"])
    clock = vault.get_cube(cube.id).clock
    vault.commit(cube.id, [Write(a.model_copy(update={"text": "a v2"}), "update", 1)])
    [b] = _add(vault, cube, ["b v1"])
    changes = {c.item_id: c for c in vault.changes_since(cube.id, clock)}
    assert set(changes) == {a.id, b.id}
    assert changes[a.id].then.text == "a v1" and changes[a.id].current.text == "a v2"
    assert changes[b.id].then is None


def test_purge_removes_everything(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    [a, b] = _add(vault, cube, ["secret alpha", "public beta"])
    vault.commit(cube.id, [Write(a.model_copy(update={"text": "secret alpha two"}), "update", 1)])
    assert vault.purge([a.id, "unknown"]) == 1
    assert vault.get_many([a.id]) == {}
    assert vault.history(a.id) == []
    assert vault.search_text("secret", ItemFilter(cube_ids=(cube.id,), states=()), 5) == []
    assert vault.get_many([b.id])[b.id].text == "public beta"
    assert vault.changes_since(cube.id, 0) and all(
        c.item_id != a.id for c in vault.changes_since(cube.id, 0))


def test_record_access_and_feedback_do_not_version(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    [a] = _add(vault, cube, ["x"])
    vault.record_access([a.id])
    vault.record_access([a.id], used_in_answer=True)
    vault.add_feedback(a.id, 1.5)
    got = vault.get_many([a.id])[a.id]
    assert got.stats.access_count == 2
    assert got.stats.used_in_answer_count == 1
    assert got.stats.feedback_score == 1.5
    assert got.stats.last_accessed is not None
    assert got.version == 1
    with pytest.raises(NotFoundError):
        vault.add_feedback("missing", 1.0)


def test_snapshots(vault: Vault) -> None:
    cube = vault.create_cube(make_cube())
    _add(vault, cube, ["x"])
    snap = vault.create_snapshot(cube.id, "first")
    assert snap.clock == 1
    _add(vault, cube, ["y"])
    assert [(s.label, s.clock) for s in vault.list_snapshots(cube.id)] == [("first", 1)]


def test_selective_filters_still_find_everything_they_allow(vault: Vault) -> None:
    """The top BM25/vector candidates all belong to another cube: the filtered search must
    still return the few matches the filter allows."""
    crowd = vault.create_cube(make_cube("crowd"))
    small = vault.create_cube(make_cube("small"))
    vecs = unit_vectors(301, seed=11)
    vault.commit(crowd.id, [Write(make_item(crowd, f"cat number {i} cat cat"), "add", None,
                                  vecs[0]) for i in range(300)])
    [mine] = vault.commit(small.id, [Write(make_item(small, "a cat, once"), "add", None,
                                           vecs[300])])
    flt = ItemFilter(cube_ids=(small.id,))
    assert [i for i, _ in vault.search_text("cat", flt, 5)] == [mine.id]
    assert [i for i, _ in vault.search_vector(vecs[0], flt, 5)] == [mine.id]
    assert len(vault.search_text("cat", ItemFilter(cube_ids=(crowd.id,)), 250)) == 250


def test_jobs_are_claimed_once_and_reclaimed_after_a_lost_lease(vault: Vault) -> None:
    first = vault.enqueue_job("extract", {"episodes": ["a", "b"]}, cube_id=None)
    second = vault.enqueue_job("extract", {"episodes": ["c"]})
    vault.enqueue_job("other", {})
    assert first.state == "queued" and first.payload == {"episodes": ["a", "b"]}
    claimed = vault.claim_job(["extract"], lease_seconds=60)
    assert claimed is not None and claimed.id == first.id
    assert claimed.state == "running" and claimed.attempts == 1
    assert vault.claim_job(["extract"], lease_seconds=60).id == second.id
    assert vault.claim_job(["extract"]) is None  # both are leased
    done = vault.finish_job(first.id, result={"added": 2})
    assert (done.state, done.result) == ("done", {"added": 2})
    # a worker that died: its lease runs out and the job is claimed again
    crashed = vault.enqueue_job("resume", {"n": 1})
    assert vault.claim_job(["resume"], lease_seconds=0.0).id == crashed.id
    again = vault.claim_job(["resume"], lease_seconds=60)
    assert again.id == crashed.id and again.attempts == 2
    failed = vault.finish_job(crashed.id, error="model output unusable")
    assert (failed.state, failed.error) == ("failed", "model output unusable")
    with pytest.raises(NotFoundError):
        vault.get_job("missing")
    with pytest.raises(NotFoundError):
        vault.finish_job("missing", result={})


# --- import_versions (cube import, MemStore pulls) ----------------------------------------
def _history_of(vault: Vault, cube, texts: list[str]) -> list:
    """A source cube with one item per text, the first edited twice; its histories."""
    items = _add(vault, cube, texts)
    first = items[0]
    for n, text in enumerate(["edited once", "edited twice"], start=1):
        [first] = vault.commit(cube.id, [Write(first.model_copy(update={"text": text}),
                                               "update", n, unit_vectors(1, seed=20 + n)[0])])
    vault.record_access([first.id])
    return [vault.history(i.id) for i in items]


def _imported(histories: list, cube, vectors, stats=None):
    from memosys.infra.vault.base import ImportedItem, VersionRecord

    out = []
    for records, vec in zip(histories, vectors, strict=True):
        new_id = "copy-" + records[0].item.id  # both cubes live in one vault here
        moved = [VersionRecord(r.item.model_copy(update={"cube_id": cube.id, "id": new_id}),
                               r.clock, r.op, r.at) for r in records]
        out.append(ImportedItem(moved, vec, stats))
    return out


def test_import_versions_into_a_fresh_cube_keeps_history_and_clocks(vault: Vault) -> None:
    from memosys.types import Stats

    source = vault.create_cube(make_cube("source"))
    histories = _history_of(vault, source, ["alpha one", "beta two"])
    target = vault.create_cube(make_cube("target"))
    vecs = unit_vectors(2, seed=5)
    stats = Stats(access_count=3, heat=1.5)
    clock = vault.import_versions(target.id, _imported(histories, target, vecs, stats))
    assert clock == vault.get_cube(source.id).clock == vault.get_cube(target.id).clock
    for records in histories:
        copied = vault.history("copy-" + records[0].item.id)
        assert [(r.item.version, r.item.text, r.clock, r.op, r.at) for r in copied] == [
            (r.item.version, r.item.text, r.clock, r.op, r.at) for r in records]
    [hit] = vault.search_vector(vecs[1], ItemFilter(cube_ids=(target.id,)), 1)
    first, second = ("copy-" + h[0].item.id for h in histories)
    assert hit[0] == second
    assert vault.search_text("edited", ItemFilter(cube_ids=(target.id,)), 5)[0][0] == first
    assert vault.get_many([first])[first].stats.heat == 1.5
    assert len(vault.changes_since(target.id, 0)) == 2


def test_import_versions_appends_and_renumbers_clocks_atomically(vault: Vault) -> None:
    from memosys.infra.vault.base import ImportedItem, VersionRecord

    cube = vault.create_cube(make_cube())
    [local] = _add(vault, cube, ["already here"])
    clock = vault.get_cube(cube.id).clock
    at = datetime(2025, 1, 2, tzinfo=UTC)
    nxt = VersionRecord(local.model_copy(update={"text": "changed upstream", "version": 2}),
                        40, "update", at)
    fresh = make_item(cube, "brand new")
    new = VersionRecord(fresh, 41, "add", at)
    bad = ImportedItem([new], unit_vectors(1)[0], expected_version=None)
    ahead = VersionRecord(nxt.item.model_copy(update={"version": 3}), 40, "update", at)
    stale = ImportedItem([ahead], None, expected_version=2)  # the cube holds version 1
    with pytest.raises(ConflictError):
        vault.import_versions(cube.id, [bad, stale])
    assert vault.get_many([fresh.id]) == {}
    assert vault.get_cube(cube.id).clock == clock
    assert len(vault.history(local.id)) == 1
    new_clock = vault.import_versions(
        cube.id, [ImportedItem([nxt], None, expected_version=1), bad])
    assert new_clock == clock + 2  # 40 and 41 renumbered after the cube's own clock
    assert [(r.item.version, r.clock) for r in vault.history(local.id)] == [
        (1, clock), (2, clock + 1)]
    assert vault.get_many([local.id])[local.id].text == "changed upstream"
    assert {c.item_id for c in vault.changes_since(cube.id, clock)} == {local.id, fresh.id}
    with pytest.raises(ValidationError):  # versions must be consecutive
        vault.import_versions(cube.id, [ImportedItem([nxt], None, expected_version=2)])


def test_import_versions_wipe_replaces_the_cube(vault: Vault) -> None:
    from memosys.infra.vault.base import ImportedItem, VersionRecord

    cube = vault.create_cube(make_cube())
    old = _add(vault, cube, ["old one", "old two"])
    clock = vault.get_cube(cube.id).clock
    item = make_item(cube, "the replacement")
    vault.import_versions(cube.id, [ImportedItem(
        [VersionRecord(item, 1, "add", datetime(2025, 1, 1, tzinfo=UTC))],
        unit_vectors(1, seed=3)[0])], wipe=True)
    assert vault.get_many([i.id for i in old]) == {}
    assert vault.history(old[0].id) == []
    assert [i.text for i in vault.list_items(ItemFilter(cube_ids=(cube.id,)))] == [
        "the replacement"]
    assert vault.get_cube(cube.id).clock == clock + 1
    assert [h[0] for h in vault.search_vector(unit_vectors(1, seed=3)[0],
                                              ItemFilter(cube_ids=(cube.id,)), 5)] == [item.id]
    assert vault.search_text("old", ItemFilter(cube_ids=(cube.id,)), 5) == []


def test_import_versions_can_create_the_cube_in_the_same_transaction(vault: Vault) -> None:
    from memosys.infra.vault.base import ImportedItem, VersionRecord

    vault.create_cube(make_cube("taken"))
    cube = make_cube("fresh")
    item = make_item(cube, "inside the new cube")
    vec = unit_vectors(1, seed=8)[0]
    entry = ImportedItem([VersionRecord(item, 3, "add", datetime(2025, 1, 1, tzinfo=UTC))], vec)
    clash = cube.model_copy(update={"name": "taken"})
    with pytest.raises(ConflictError):
        vault.import_versions(cube.id, [entry], new_cube=clash)
    assert [c.name for c in vault.list_cubes()] == ["taken"]
    assert vault.get_many([item.id]) == {}
    assert vault.import_versions(cube.id, [entry], new_cube=cube) == 3
    assert vault.get_cube("fresh").clock == 3
    assert np.allclose(vault.vectors([item.id, "missing"])[item.id], vec)
    assert list(vault.vectors([item.id, "missing"])) == [item.id]
