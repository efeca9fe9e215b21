"""`memosys.Client` against a live server: the same code runs embedded and remote."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from live_server import LiveServer
from memosys import Client, MemOS
from memosys.config import Settings
from memosys.errors import ConflictError, NotFoundError, ValidationError
from memosys.interface.server import create_app
from memosys.system import SearchFilters


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[str]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("client")), embedder=embedder)
    with LiveServer(create_app(mos)) as url:
        yield url
    mos.close()


@pytest.fixture
def client(server: str) -> Iterator[Client]:
    with Client(server) as c:
        yield c


def scenario(mem: Any, cube: str) -> dict[str, Any]:
    """An application's use of memory, written once against the Memory API."""
    mem.create_cube(cube, owner="alice")
    mem.ensure_cube(cube)
    [pref] = mem.add(cube, "Alice prefers tea over coffee", memory_type="preference",
                     tags=["food"], user="alice")
    mem.add(cube, messages=[{"role": "user", "name": "Alice", "id": "m1",
                             "content": "I adopted a beagle called Rex."}], session="s1")
    hits = mem.search("which dog does Alice have?", cube, top_k=2)
    updated = mem.update(pref.id, text="Alice prefers green tea")
    rolled = mem.rollback(pref.id, 1)
    mem.feedback(pref.id, 2.0)
    history = mem.history(pref.id)
    mem.delete(pref.id)
    only_prefs = mem.search("Alice", [cube], filters={"memory_types": ["preference"],
                                                       "states": []})
    listed = mem.list(cube, SearchFilters(states=()), limit=10)
    stats = mem.stats(cube)["cubes"][0]
    feedback = mem.get(pref.id).stats.feedback_score
    purged = mem.purge([pref.id])
    return {
        "hit_texts": [h.item.text for h in hits],
        "hit_provenance": hits[0].provenance["message_ids"],
        "versions": [updated.version, rolled.version, rolled.text],
        "history": [(r.item.version, r.op, r.item.text) for r in history],
        "feedback": feedback,
        "prefs": [(h.item.text, h.item.state.value) for h in only_prefs],
        "listed": sorted(i.text for i in listed),
        "stats": (stats["items"], stats["by_state"], stats["by_type"]),
        "purged": purged,
        "cubes": cube in [c.name for c in mem.list_cubes()],
    }


def test_same_code_runs_embedded_and_remote(client: Client, mos: MemOS) -> None:
    remote = scenario(client, "shared-code")
    embedded = scenario(mos, "shared-code")
    assert remote == embedded
    assert "Alice: I adopted a beagle called Rex." in remote["hit_texts"]
    assert remote["history"] == [(1, "add", "Alice prefers tea over coffee"),
                                 (2, "update", "Alice prefers green tea"),
                                 (3, "rollback", "Alice prefers tea over coffee")]
    assert remote["purged"] == 1 and remote["feedback"] == 2.0


def test_client_raises_the_runtime_errors(client: Client) -> None:
    client.create_cube("errs")
    with pytest.raises(ConflictError):
        client.create_cube("errs")
    with pytest.raises(NotFoundError):
        client.get("no-such-id")
    with pytest.raises(NotFoundError):
        client.add("no-such-cube", "x")
    with pytest.raises(ValidationError):
        client.add("errs", "   ")
    [item] = client.add("errs", "Alice prefers tea")
    client.update(item.id, text="v2")
    with pytest.raises(ConflictError):
        client.update(item.id, text="stale", expected_version=1)
    with pytest.raises(ValidationError):
        client.add("errs", "x", memory_type="gossip")
    assert [i.id for i in client.list("errs")] == [item.id]


def test_client_documents_and_jobs(client: Client) -> None:
    client.create_cube("docs")
    chunks = client.add_document("docs", "# Notes\n\n" + "Alice hikes in the Alps. " * 60,
                                 uri="file:///notes.md", max_chunk_chars=400)
    assert len(chunks) > 1 and chunks[0].source.document_uri == "file:///notes.md"
    queued = client.add("docs", messages=[{"role": "user", "content": "I moved to Lisbon."}],
                        infer=True, wait=False)
    assert queued.job is not None and client.job(queued.job.id).id == queued.job.id
