"""The topic index (cube -> topics -> memories) in the storage contract: both backends,
the same tests. Memories go in through `vault.commit` with a topic policy installed; two
clearly separated groups of vectors stand for two subjects."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import DIM, make_cube, make_item
from memosys.infra.vault.base import Vault, Write
from memosys.infra.vault.topic_sql import TopicPolicy
from memosys.types import MemoryState

POTTERY = [
    "I signed up for a pottery class, the clay wheel is hard",
    "My pottery bowl cracked in the kiln again",
    "Glazing pottery takes patience, the clay has to dry",
    "The pottery teacher showed us how to center clay",
    "I gave my sister a pottery mug I made",
    "Pottery on Sunday mornings calms me down in Zanzibar",
]
HIKING = [
    "We went hiking on the mountain trail at dawn",
    "The hiking boots gave me blisters on the trail",
    "Hiking up the ridge trail we saw an eagle",
    "Next weekend more hiking, a longer trail",
    "My knees hurt after hiking downhill",
    "Hiking with the dog on the coastal trail",
]


def _vectors(n: int, axis: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros(DIM, np.float32)
    base[axis] = 1.0
    vecs = base + 0.15 * rng.standard_normal((n, DIM)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


@pytest.fixture
def topical(vault: Vault):
    vault.set_topic_policy(TopicPolicy(threshold=0.5))
    cube = vault.create_cube(make_cube("t"))
    texts = [t for pair in zip(POTTERY, HIKING, strict=True) for t in pair]  # interleaved
    vecs = {**dict(zip(POTTERY, _vectors(6, 0, 1), strict=True)),
            **dict(zip(HIKING, _vectors(6, 1, 2), strict=True))}
    stored = {}
    for text in texts:  # one commit per memory, as they arrive
        item = make_item(cube, text)
        stored[text] = vault.commit(cube.id, [Write(item, "add", None, vecs[text])])[0]
    return vault, cube, stored, vecs


def _groups(vault: Vault, cube) -> list[set[str]]:
    return sorted((set(t.memory_ids) for t in vault.topics_list(cube.id)), key=sorted)


def _all_text(vault: Vault, cube) -> str:
    return " ".join(f"{t.label} {t.summary} {' '.join(t.keywords)}"
                    for t in vault.topics_list(cube.id)).lower()


def test_memories_join_nearest_topic_with_keyword_labels(topical) -> None:
    vault, cube, stored, _ = topical
    topics = vault.topics_list(cube.id)
    assert len(topics) == 2
    by_label = {("pottery" in t.label): t for t in topics}
    pottery, hiking = by_label[True], by_label[False]
    assert set(pottery.memory_ids) == {stored[t].id for t in POTTERY}
    assert set(hiking.memory_ids) == {stored[t].id for t in HIKING}
    assert "hiking" in hiking.label and "trail" in hiking.keywords
    assert pottery.size == 6 and pottery.summary.startswith("6 memories about")
    assert pottery.summary_by == "keywords"
    got = vault.topic_get(pottery.id)
    assert got is not None and got.memory_ids == pottery.memory_ids
    assert vault.topic_of([stored[HIKING[0]].id]) == {stored[HIKING[0]].id: hiking.id}
    near = vault.topic_nearest(cube.id, _vectors(1, 1, 9)[0], k=2)
    assert near[0][0] == hiking.id and near[0][1] > near[1][1]


def test_delete_leaves_and_rollback_rejoins(topical) -> None:
    vault, cube, stored, _ = topical
    item = stored[HIKING[2]]
    deleted = vault.commit(cube.id, [Write(item.model_copy(update={"state": MemoryState.DELETED}),
                                           "delete", item.version)])[0]
    hiking = next(t for t in vault.topics_list(cube.id) if "hiking" in t.label)
    assert item.id not in hiking.memory_ids and hiking.size == 5
    # a rollback writes the old state again with no new vector: the stored one is used
    vault.commit(cube.id, [Write(deleted.model_copy(update={"state": MemoryState.ACTIVE}),
                                 "rollback", deleted.version)])
    hiking = vault.topic_get(hiking.id)
    assert hiking is not None and item.id in hiking.memory_ids and hiking.size == 6


def test_purge_leaves_no_text_in_labels_or_summaries(topical) -> None:
    vault, cube, stored, _ = topical
    pottery = next(t for t in vault.topics_list(cube.id) if "pottery" in t.label)
    # a model summary naming the memory's words is replaced on purge, not kept
    assert vault.topic_set_summary(pottery.id, pottery.revision, "Pottery in Zanzibar",
                                   "Sundays of pottery in Zanzibar.")
    assert vault.topic_get(pottery.id).summary_by == "model"
    # the purged memory is the most central one, so it was the summary's example
    target = stored[POTTERY[5]]
    for text in POTTERY:
        if text != POTTERY[5]:
            continue
    vault.purge([target.id])
    after = vault.topic_get(pottery.id)
    assert after is not None and target.id not in after.memory_ids and after.size == 5
    assert after.summary_by == "keywords"
    assert "zanzibar" not in _all_text(vault, cube)
    assert "sunday" not in _all_text(vault, cube)
    # purging every member drops the topic
    vault.purge(list(after.memory_ids))
    assert [t for t in vault.topics_list(cube.id) if t.id == pottery.id] == []
    assert len(vault.topics_list(cube.id)) == 1


def test_model_summary_refused_after_a_member_left(topical) -> None:
    vault, cube, stored, _ = topical
    hiking = next(t for t in vault.topics_list(cube.id) if "hiking" in t.label)
    item = stored[HIKING[0]]
    vault.commit(cube.id, [Write(item.model_copy(update={"state": MemoryState.DELETED}),
                                 "delete", item.version)])
    assert not vault.topic_set_summary(hiking.id, hiking.revision, "x", "y")
    fresh = vault.topic_get(hiking.id)
    assert vault.topic_set_summary(fresh.id, fresh.revision, "Hiking trips", "Walks.")
    # a memory joining keeps the model summary (it describes only surviving memories)
    extra = make_item(cube, "Hiking again on the trail")
    vault.commit(cube.id, [Write(extra, "add", None, _vectors(1, 1, 5)[0])])
    now = vault.topic_get(hiking.id)
    assert now.summary_by == "model" and now.label == "Hiking trips" and now.size == 6


def test_big_topics_split_and_rebuild_is_deterministic(vault: Vault) -> None:
    vault.set_topic_policy(TopicPolicy(threshold=0.3, max_size=8))
    cube = vault.create_cube(make_cube("s"))
    # two sub-groups close enough to share a topic at first
    a, b = _vectors(6, 0, 3), _vectors(6, 1, 4)
    mixed = (a + 0.9 * np.eye(DIM, dtype=np.float32)[1])
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    vecs = list(mixed) + list(b)
    for n, vec in enumerate(vecs):
        vault.commit(cube.id, [Write(make_item(cube, f"memory {n} about things {n % 3}"),
                                     "add", None, vec)])
    topics = vault.topics_list(cube.id)
    assert sum(t.size for t in topics) == 12
    assert all(t.size <= 8 for t in topics) and len(topics) >= 2
    first = _groups(vault, cube)
    assert vault.topics_rebuild(cube.id) == len(vault.topics_list(cube.id))
    again = _groups(vault, cube)
    vault.topics_rebuild(cube.id)
    assert _groups(vault, cube) == again
    assert sum(len(g) for g in first) == sum(len(g) for g in again) == 12


def test_no_policy_no_topics_but_overview_works(vault: Vault) -> None:
    cube = vault.create_cube(make_cube("n"))
    vault.commit(cube.id, [Write(make_item(cube, "pottery"), "add", None, _vectors(1, 0, 1)[0])])
    assert vault.topics_list(cube.id) == []
    assert vault.topics_rebuild(cube.id) == 1
    topics, entities = vault.topic_overview(cube.id)
    assert topics and topics[0][1] == 1 and entities == []


def test_private_and_sensitive_memories_lend_no_words(topical) -> None:
    vault, cube, _, _ = topical
    from memosys.types import Visibility

    secret = make_item(cube, "pottery xylophone xylophone secret", visibility=Visibility.PRIVATE,
                       owner="alice")
    flagged = make_item(cube, "pottery quokka quokka", sensitivity=["pii"])
    near = _vectors(2, 0, 11)
    vault.commit(cube.id, [Write(secret, "add", None, near[0]),
                           Write(flagged, "add", None, near[1])])
    pottery = next(t for t in vault.topics_list(cube.id) if "pottery" in t.label)
    assert {secret.id, flagged.id} <= set(pottery.memory_ids)
    text = _all_text(vault, cube)
    assert "xylophone" not in text and "quokka" not in text
