"""Graph and topic endpoints over real HTTP (uvicorn on loopback) with API keys: what alice
wrote is browsable by alice, a 404 for bob until she shares the cube, and the answers match
the Python API (entity page, facts as of a date, timeline, path, topics, overview)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from live_server import LiveServer
from memosys.config import Settings
from memosys.interface.server import create_app
from memosys.system import MemOS

JAN = datetime(2023, 1, 10, tzinfo=UTC)
JUN = datetime(2023, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[tuple[str, dict]]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("rest-graph")), embedder=embedder)
    mos.create_user("alice", role="owner")
    mos.create_user("bob", role="member")
    _, alice = mos.create_api_key("alice")
    _, bob = mos.create_api_key("bob")
    as_alice = mos.as_actor(mos.authenticate(alice))
    as_alice.create_cube("conv")
    as_alice.add("conv", session="s1", valid_from=JAN, messages=[
        {"name": "Caroline", "content": "I live in Boston and I work at Sunrise Adoption Agency."},
        {"name": "Caroline", "content": "My sister Anna loves hiking with me."},
        {"name": "Caroline", "content": "Pottery class again, the clay wheel is hard."},
        {"name": "Caroline", "content": "My pottery bowl cracked in the kiln."}])
    as_alice.add("conv", session="s2", valid_from=JUN, messages=[
        {"name": "Caroline", "content": "Big news: I moved to Denver last month."}])
    with LiveServer(create_app(mos)) as url:
        yield url, {"alice": alice, "bob": bob, "mos": mos}
    mos.close()


def _as(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_entities_entity_page_facts_timeline_path(served) -> None:
    url, keys = served
    with _as(url, keys["alice"]) as http:
        listed = http.get("/api/v1/cubes/conv/entities", params={"type": "place"})
        assert listed.status_code == 200, listed.text
        assert {"Boston", "Denver"} <= {e["name"] for e in listed.json()}
        assert [e["name"] for e in http.get("/api/v1/cubes/conv/entities",
                                            params={"prefix": "Bos"}).json()] == ["Boston"]
        page = http.get("/api/v1/cubes/conv/entity", params={"name": "Caroline's sister"})
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["entity"]["name"] == "Anna"
        assert any(f["predicate"] == "sister" for f in body["facts"])
        assert any("hiking" in m["text"] for m in body["memories"])
        march = http.get("/api/v1/cubes/conv/facts", params={
            "name": "Caroline", "as_of": "2023-03-01T00:00:00Z", "predicate": "lives_in"})
        assert [f["object"]["name"] for f in march.json()] == ["Boston"]
        july = http.get("/api/v1/cubes/conv/facts", params={
            "name": "Caroline", "as_of": "2023-07-01T00:00:00Z", "predicate": "lives_in"})
        assert [f["object"]["name"] for f in july.json()] == ["Denver"]
        timeline = http.get("/api/v1/cubes/conv/timeline", params={"name": "Caroline"}).json()
        boston = next(f for f in timeline if f["object"]["name"] == "Boston")
        assert boston["valid_to"].startswith("2023-06-01") and boston["sources"]
        near = http.get("/api/v1/cubes/conv/neighbours",
                        params={"name": "Anna", "hops": 2}).json()
        assert {"Caroline", "Boston"} <= {n["entity"]["name"] for n in near}
        path = http.get("/api/v1/cubes/conv/path",
                        params={"source": "Boston", "target": "Anna"}).json()
        assert path["found"] and [s["entity"]["name"] for s in path["steps"]] == [
            "Boston", "Caroline", "Anna"]
        # bad input: typed errors, never a 500
        assert http.get("/api/v1/cubes/conv/entity", params={"name": "Nobody"}
                        ).json()["error"]["code"] == "not_found"
        assert http.get("/api/v1/cubes/conv/neighbours",
                        params={"name": "Anna", "hops": 9}).status_code == 422
        assert http.get("/api/v1/cubes/conv/facts",
                        params={"name": "Anna", "as_of": "yesterday"}).status_code == 422


def test_topics_topic_and_overview(served) -> None:
    url, keys = served
    with _as(url, keys["alice"]) as http:
        topics = http.get("/api/v1/cubes/conv/topics")
        assert topics.status_code == 200, topics.text
        listed = topics.json()
        assert sum(t["size"] for t in listed) == 5
        pottery = next(t for t in listed if "pottery" in t["label"] or "clay" in t["label"])
        one = http.get(f"/api/v1/topics/{pottery['id']}").json()
        assert one["topic"]["id"] == pottery["id"]
        assert {m["id"] for m in one["memories"]} == set(pottery["memory_ids"])
        assert http.get("/api/v1/topics/nope").json()["error"]["code"] == "not_found"
        ov = http.get("/api/v1/cubes/conv/overview").json()
        assert ov["memories"] == 5 and ov["topics"]
        assert "Caroline" in {e["name"] for e in ov["entities"]}


def test_other_users_see_nothing_until_shared(served) -> None:
    url, keys = served
    with _as(url, keys["alice"]) as http:
        topic_id = http.get("/api/v1/cubes/conv/topics").json()[0]["id"]
    with _as(url, keys["bob"]) as bob:
        for path, params in (("/api/v1/cubes/conv/entities", {}),
                             ("/api/v1/cubes/conv/entity", {"name": "Anna"}),
                             ("/api/v1/cubes/conv/facts", {"name": "Caroline"}),
                             ("/api/v1/cubes/conv/timeline", {"name": "Caroline"}),
                             ("/api/v1/cubes/conv/path", {"source": "Boston", "target": "Anna"}),
                             ("/api/v1/cubes/conv/topics", {}),
                             (f"/api/v1/topics/{topic_id}", {}),
                             ("/api/v1/cubes/conv/overview", {})):
            resp = bob.get(path, params=params)
            assert resp.status_code == 404, (path, resp.text)
        keys["mos"].share_cube("conv", "bob", "read")
        assert bob.get(f"/api/v1/topics/{topic_id}").status_code == 200
        assert bob.get("/api/v1/cubes/conv/entity", params={"name": "Anna"}).status_code == 200
