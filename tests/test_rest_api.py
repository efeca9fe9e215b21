"""The REST service over real HTTP: uvicorn on loopback, httpx as the client.

One server per module (the embedder loads once per session); tests use their own cubes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from live_server import LiveServer
from memosys.config import Settings
from memosys.interface.server import ServerConfig, create_app
from memosys.system import MemOS

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[MemOS]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("rest")), embedder=embedder)
    yield mos
    mos.close()


@pytest.fixture(scope="module")
def base_url(runtime: MemOS) -> Iterator[str]:
    app = create_app(runtime, ServerConfig(max_body_bytes=MAX_BODY))
    with LiveServer(app) as url:
        yield url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture
def cube(http: httpx.Client) -> str:
    name = f"c-{uuid.uuid4().hex[:8]}"
    resp = http.post("/api/v1/cubes", json={"name": name, "owner": "alice"})
    assert resp.status_code == 201, resp.text
    return name


def _error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return str(body["error"]["message"])


def _add(http: httpx.Client, cube: str, **body: object) -> list[dict]:
    resp = http.post(f"/api/v1/cubes/{cube}/memories", json=body)
    assert resp.status_code == 201, resp.text
    return list(resp.json()["items"])


def _count(http: httpx.Client, cube: str) -> int:
    return int(http.get(f"/api/v1/cubes/{cube}/stats").json()["items"])


# --- service --------------------------------------------------------------------------
def test_health_docs_and_openapi(http: httpx.Client) -> None:
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["auth"] == "open"
    assert health["embedder"] == "minilm-l6-v2"
    assert "swagger" in http.get("/docs").text.lower()
    paths = http.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/cubes", "/api/v1/cubes/{cube}/memories", "/api/v1/search",
                 "/api/v1/memories/{item_id}", "/api/v1/memories/{item_id}/history",
                 "/api/v1/memories/{item_id}/rollback", "/api/v1/memories/{item_id}/purge",
                 "/api/v1/feedback", "/api/v1/jobs/{job_id}", "/v1/models", "/v1/embeddings"):
        assert path in paths, path


def test_metrics_are_prometheus_text(http: httpx.Client, cube: str) -> None:
    _add(http, cube, text="Alice prefers tea")
    http.get("/api/v1/memories/does-not-exist")
    resp = http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert f'memosys_memories{{cube="{cube}",state="active"}} 1.0' in text
    assert 'memosys_jobs{state="queued"}' in text
    assert ('memosys_http_requests_total{method="GET",route="/api/v1/memories/{item_id}",'
            'status="404"}') in text
    assert 'memosys_http_request_duration_seconds_bucket{' in text
    assert "memosys_http_requests_in_flight" in text


# --- cubes ----------------------------------------------------------------------------
def test_cubes_create_list_get(http: httpx.Client, cube: str) -> None:
    got = http.get(f"/api/v1/cubes/{cube}").json()
    assert got["name"] == cube and got["owner"] == "alice"
    assert got["config"]["embedder_id"] == "minilm-l6-v2"
    assert http.get(f"/api/v1/cubes/{got['id']}").json()["name"] == cube  # by id too
    names = [c["name"] for c in http.get("/api/v1/cubes", params={"limit": 1000})
             .json()["items"]]
    assert cube in names
    _error(http.post("/api/v1/cubes", json={"name": cube}), 409, "conflict")
    _error(http.post("/api/v1/cubes", json={"name": "bad name!"}), 400, "invalid_input")
    _error(http.post("/api/v1/cubes", json={"name": "x", "colour": "red"}), 422,
           "invalid_input")
    _error(http.get("/api/v1/cubes/no-such-cube"), 404, "not_found")


def test_cube_list_pages(http: httpx.Client) -> None:
    for _ in range(3):
        http.post("/api/v1/cubes", json={"name": f"p-{uuid.uuid4().hex[:8]}"})
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = http.get("/api/v1/cubes", params={"limit": 2, "offset": offset}).json()
        assert len(page["items"]) <= 2
        seen.extend(c["id"] for c in page["items"])
        offset = page["next_offset"]
    everything = http.get("/api/v1/cubes", params={"limit": 1000}).json()
    assert seen == [c["id"] for c in everything["items"]] and everything["next_offset"] is None


# --- memories -------------------------------------------------------------------------
def test_add_text_messages_and_document(http: httpx.Client, cube: str) -> None:
    [fact] = _add(http, cube, text="Alice prefers green tea", memory_type="preference",
                  tags=["food"], user="alice")
    assert fact["memory_type"] == "preference" and fact["tags"] == ["food"]
    assert fact["source"]["user"] == "alice" and fact["version"] == 1
    episodes = _add(http, cube, messages=[
        {"role": "user", "name": "Alice", "content": "I adopted a beagle called Rex.",
         "id": "m1", "timestamp": "2023-05-08T13:56:00Z"},
        {"role": "assistant", "content": "Lovely!"}], session="s1")
    assert [e["memory_type"] for e in episodes] == ["episode", "episode"]
    assert episodes[0]["text"] == "Alice: I adopted a beagle called Rex."
    assert episodes[0]["source"]["message_ids"] == ["m1"]
    assert episodes[0]["valid_from"].startswith("2023-05-08T13:56")
    doc = "# Trip\n\n" + "Alice visited Oslo in June and loved the fjords. " * 30
    chunks = _add(http, cube, document={"content": doc, "uri": "file:///trip.md",
                                        "title": "Trip", "max_chunk_chars": 500})
    assert len(chunks) > 1
    assert {c["memory_type"] for c in chunks} == {"document"}
    assert chunks[0]["source"]["document_uri"] == "file:///trip.md"
    assert _count(http, cube) == 3 + len(chunks)


def test_add_rejects_bad_input_and_stores_nothing(http: httpx.Client, cube: str) -> None:
    _add(http, cube, text="kept")
    url = f"/api/v1/cubes/{cube}/memories"
    _error(http.post(url, json={}), 400, "invalid_input")
    _error(http.post(url, json={"text": "a", "messages": [{"content": "b"}]}), 400,
           "invalid_input")
    _error(http.post(url, json={"text": "   "}), 400, "invalid_input")
    _error(http.post(url, json={"text": "x", "memory_type": "gossip"}), 422, "invalid_input")
    _error(http.post(url, json={"text": "x", "tags": ["a,b"]}), 400, "invalid_input")
    # one bad message fails the whole batch: nothing of it is stored
    _error(http.post(url, json={"messages": [{"content": "fine"}, {"content": " "}]}), 400,
           "invalid_input")
    _error(http.post(url, content=b"{not json", headers={"content-type": "application/json"}),
           422, "invalid_input")
    _error(http.post("/api/v1/cubes/no-such-cube/memories", json={"text": "x"}), 404,
           "not_found")
    assert _count(http, cube) == 1


def test_request_size_limit(http: httpx.Client, cube: str) -> None:
    big = "x" * (MAX_BODY + 10)
    msg = _error(http.post(f"/api/v1/cubes/{cube}/memories", json={"text": big}), 413,
                 "payload_too_large")
    assert str(MAX_BODY) in msg

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit still holds
        yield b'{"text": "'
        for _ in range(MAX_BODY // 1000 + 1):
            yield b"y" * 1000
        yield b'"}'

    resp = http.post(f"/api/v1/cubes/{cube}/memories", content=chunked(),
                     headers={"content-type": "application/json"})
    _error(resp, 413, "payload_too_large")
    assert _count(http, cube) == 0
    _add(http, cube, text="y" * (MAX_BODY // 2))  # under the limit: fine
    assert _count(http, cube) == 1


def test_list_memories_pagination_and_filters(http: httpx.Client, cube: str) -> None:
    added = [_add(http, cube, text=f"note number {i}", tags=["even"] if i % 2 == 0 else [])[0]
             for i in range(7)]
    ids: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        page = http.get(f"/api/v1/cubes/{cube}/memories",
                        params={"limit": 3, "offset": offset}).json()
        ids.extend(i["id"] for i in page["items"])
        offset = page["next_offset"]
        pages += 1
    assert pages == 3 and sorted(ids) == sorted(a["id"] for a in added) and len(set(ids)) == 7
    evens = http.get(f"/api/v1/cubes/{cube}/memories", params={"tag": "even"}).json()
    assert len(evens["items"]) == 4
    http.delete(f"/api/v1/memories/{added[0]['id']}")
    active = http.get(f"/api/v1/cubes/{cube}/memories").json()["items"]
    assert len(active) == 6
    deleted = http.get(f"/api/v1/cubes/{cube}/memories", params={"state": "deleted"}).json()
    assert [i["id"] for i in deleted["items"]] == [added[0]["id"]]
    _error(http.get(f"/api/v1/cubes/{cube}/memories", params={"limit": 0}), 422,
           "invalid_input")
    _error(http.get(f"/api/v1/cubes/{cube}/memories", params={"limit": 5000}), 422,
           "invalid_input")
    _error(http.get(f"/api/v1/cubes/{cube}/memories", params={"state": "gone"}), 422,
           "invalid_input")


def test_search_with_scores_ranks_and_provenance(http: httpx.Client, cube: str) -> None:
    _add(http, cube, messages=[{"role": "user", "name": "Alice", "id": "m7",
                                "content": "I adopted a beagle called Rex."}], session="s1")
    _add(http, cube, text="Alice's favourite drink is green tea", memory_type="preference")
    resp = http.post("/api/v1/search", json={"query": "which dog does Alice have?",
                                             "cube_ids": [cube], "top_k": 2})
    hits = resp.json()["hits"]
    assert hits[0]["item"]["text"] == "Alice: I adopted a beagle called Rex."
    assert hits[0]["score"] >= hits[1]["score"] and "vector" in hits[0]["ranks"]
    assert hits[0]["provenance"]["message_ids"] == ["m7"]
    assert hits[0]["provenance"]["session"] == "s1"
    only_prefs = http.post("/api/v1/search", json={
        "query": "Alice", "cube_ids": [cube], "filters": {"memory_types": ["preference"]}})
    assert [h["item"]["memory_type"] for h in only_prefs.json()["hits"]] == ["preference"]
    _error(http.post("/api/v1/search", json={"query": " ", "cube_ids": [cube]}), 400,
           "invalid_input")
    _error(http.post("/api/v1/search", json={"query": "x", "top_k": 0}), 422, "invalid_input")
    _error(http.post("/api/v1/search", json={"query": "x", "cube_ids": ["nope-cube"]}), 404,
           "not_found")
    _error(http.post("/api/v1/search", json={"query": "x", "filters": {"colour": 1}}), 422,
           "invalid_input")


def test_get_update_history_rollback_delete_purge(http: httpx.Client, cube: str) -> None:
    [item] = _add(http, cube, text="Alice prefers tea", tags=["food"])
    url = f"/api/v1/memories/{item['id']}"
    assert http.get(url).json()["text"] == "Alice prefers tea"
    v2 = http.patch(url, json={"text": "Alice prefers green tea"}).json()
    assert v2["version"] == 2 and v2["tags"] == ["food"]  # untouched fields are kept
    _error(http.patch(url, json={"text": "stale", "expected_version": 1}), 409, "conflict")
    _error(http.patch(url, json={}), 400, "invalid_input")
    _error(http.patch(url, json={"kind": "activation"}), 422, "invalid_input")
    _error(http.patch(url, json={"text": ""}), 400, "invalid_input")
    history = http.get(f"{url}/history").json()
    assert [v["version"] for v in history["items"]] == [1, 2]
    assert [v["op"] for v in history["items"]] == ["add", "update"]
    page = http.get(f"{url}/history", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_offset"] == 1
    v3 = http.post(f"{url}/rollback", json={"version": 1}).json()
    assert v3["version"] == 3 and v3["text"] == "Alice prefers tea"
    _error(http.post(f"{url}/rollback", json={"version": 99}), 404, "not_found")
    _error(http.post(f"{url}/rollback", json={"version": "one"}), 422, "invalid_input")
    deleted = http.delete(url).json()
    assert deleted["state"] == "deleted" and deleted["version"] == 4
    hits = http.post("/api/v1/search", json={"query": "tea", "cube_ids": [cube]}).json()
    assert item["id"] not in [h["item"]["id"] for h in hits["hits"]]
    assert http.post(f"{url}/rollback", json={"version": 3}).json()["state"] == "active"
    assert http.post(f"{url}/purge").json() == {"purged": 1}
    _error(http.get(url), 404, "not_found")
    _error(http.get(f"{url}/history"), 404, "not_found")
    _error(http.post(f"{url}/purge"), 404, "not_found")


def test_feedback_and_jobs(http: httpx.Client, cube: str) -> None:
    [item] = _add(http, cube, text="Alice prefers tea")
    after = http.post("/api/v1/feedback", json={"item_id": item["id"], "delta": 1.5}).json()
    assert after["stats"]["feedback_score"] == 1.5
    _error(http.post("/api/v1/feedback", json={"item_id": "nope", "delta": 1}), 404,
           "not_found")
    _error(http.post("/api/v1/feedback", json={"item_id": item["id"], "delta": "lots"}), 422,
           "invalid_input")
    resp = http.post(f"/api/v1/cubes/{cube}/memories", json={
        "messages": [{"role": "user", "content": "I moved to Lisbon last year."}],
        "infer": True, "wait": False})
    assert resp.status_code == 201, resp.text
    job = resp.json()["job"]
    assert job["state"] == "queued" and job["kind"] == "extract"
    got = http.get(f"/api/v1/jobs/{job['id']}").json()
    assert got["id"] == job["id"] and got["state"] in ("queued", "running", "done")
    _error(http.get("/api/v1/jobs/no-such-job"), 404, "not_found")


def test_unknown_routes_and_methods_are_json_errors(http: httpx.Client) -> None:
    _error(http.get("/api/v1/nothing-here"), 404, "not_found")
    _error(http.put("/api/v1/search", json={}), 405, "method_not_allowed")


def test_open_server_refuses_non_loopback_and_keys(runtime: MemOS) -> None:
    from fastapi.testclient import TestClient

    app = create_app(runtime, ServerConfig())  # auto: open, as there are no keys
    remote = TestClient(app, client=("203.0.113.9", 5000))
    _error(remote.get("/api/v1/cubes"), 401, "unauthenticated")
    local = TestClient(app, client=("127.0.0.1", 5000))
    assert local.get("/api/v1/cubes").status_code == 200
    # keys are ignored in open mode (OpenAI clients always send one)
    assert local.get("/api/v1/cubes", headers={"Authorization": "Bearer x"}).status_code == 200


def test_serve_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "memosys", "serve", "--host", "0.0.0.0", "--home",
         str(tmp_path)], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
             "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert result.returncode == 2, result.stderr
    assert "without API keys" in result.stderr
