"""API keys over HTTP: 401 without a valid key, tenant isolation (another user's key sees
nothing of yours, not even under concurrency), sharing, revocation, audit, admin metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from live_server import LiveServer
from memosys import Client
from memosys.config import Settings
from memosys.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from memosys.interface.server import create_app
from memosys.system import MemOS


@dataclass
class Keys:
    alice: str
    bob: str
    admin: str
    bob_key_id: str


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[MemOS]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("auth")), embedder=embedder)
    yield mos
    mos.close()


@pytest.fixture(scope="module")
def keys(runtime: MemOS) -> Keys:
    for name, role in (("alice", "owner"), ("bob", "member"), ("root", "admin")):
        runtime.create_user(name, role=role)
    _, alice = runtime.create_api_key("alice")
    bob_id, bob = runtime.create_api_key("bob")
    _, admin = runtime.create_api_key("root", scopes=["read", "write", "admin"])
    return Keys(alice, bob, admin, bob_id)


@pytest.fixture(scope="module")
def url(runtime: MemOS, keys: Keys) -> Iterator[str]:
    with LiveServer(create_app(runtime)) as base:  # keys exist: API-key mode
        yield base


def _as(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def _code(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


def test_requests_need_a_valid_key(url: str, keys: Keys) -> None:
    with _as(url, None) as anon:
        assert anon.get("/health").json()["auth"] == "api_key"  # health needs no key
        resp = anon.get("/api/v1/cubes")
        _code(resp, 401, "unauthenticated")
        assert resp.headers["www-authenticate"] == "Bearer"
        _code(anon.get("/api/v1/cubes", headers={"Authorization": "Basic YTpi"}), 401,
              "unauthenticated")
        _code(anon.post("/v1/embeddings", json={"model": "minilm-l6-v2", "input": "x"}), 401,
              "unauthenticated")
    with _as(url, "msk_0123456789abcdef_" + "x" * 40) as forged:
        _code(forged.get("/api/v1/cubes"), 401, "unauthenticated")
    with _as(url, "not-a-key") as junk:
        _code(junk.get("/api/v1/cubes"), 401, "unauthenticated")


def test_another_users_key_sees_nothing(url: str, keys: Keys) -> None:
    with _as(url, keys.alice) as alice, _as(url, keys.bob) as bob:
        cube = alice.post("/api/v1/cubes", json={"name": "alice-notes"}).json()
        assert cube["owner"] == "alice"
        [item] = alice.post("/api/v1/cubes/alice-notes/memories",
                            json={"text": "Alice's door code is 4711"}).json()["items"]
        assert item["owner"] == "alice"
        assert alice.get(f"/api/v1/memories/{item['id']}").status_code == 200

        names = [c["name"] for c in bob.get("/api/v1/cubes").json()["items"]]
        assert "alice-notes" not in names
        for resp in (
            bob.get("/api/v1/cubes/alice-notes"),
            bob.get(f"/api/v1/cubes/{cube['id']}"),
            bob.get("/api/v1/cubes/alice-notes/memories"),
            bob.get("/api/v1/cubes/alice-notes/stats"),
            bob.post("/api/v1/cubes/alice-notes/memories", json={"text": "sneaky"}),
            bob.get(f"/api/v1/memories/{item['id']}"),
            bob.get(f"/api/v1/memories/{item['id']}/history"),
            bob.patch(f"/api/v1/memories/{item['id']}", json={"text": "pwned"}),
            bob.delete(f"/api/v1/memories/{item['id']}"),
            bob.post(f"/api/v1/memories/{item['id']}/purge"),
            bob.post(f"/api/v1/memories/{item['id']}/rollback", json={"version": 1}),
            bob.post("/api/v1/feedback", json={"item_id": item["id"], "delta": -5}),
            bob.post("/api/v1/search", json={"query": "door code", "cube_ids": ["alice-notes"]}),
        ):
            _code(resp, 404, "not_found")  # never reveals that it exists
        hits = bob.post("/api/v1/search", json={"query": "Alice door code"}).json()["hits"]
        assert item["id"] not in [h["item"]["id"] for h in hits]
        # nothing bob tried changed alice's memory
        after = alice.get(f"/api/v1/memories/{item['id']}").json()
        assert after["version"] == 1 and after["text"] == "Alice's door code is 4711"
        assert after["stats"]["feedback_score"] == 0


def test_sharing_read_only_then_write_is_403(url: str, keys: Keys) -> None:
    with _as(url, keys.alice) as alice, _as(url, keys.bob) as bob:
        alice.post("/api/v1/cubes", json={"name": "alice-shared"})
        [item] = alice.post("/api/v1/cubes/alice-shared/memories",
                            json={"text": "Team lunch is on Friday"}).json()["items"]
        grant = alice.post("/api/v1/cubes/alice-shared/share",
                           json={"user": "bob", "permissions": ["read"]}).json()
        assert grant["user_id"] == "bob" and grant["permissions"] == ["read"]
        assert [g["user_id"] for g in alice.get("/api/v1/cubes/alice-shared/share")
                .json()["items"]] == ["bob"]
        assert bob.get(f"/api/v1/memories/{item['id']}").json()["text"] == item["text"]
        _code(bob.patch(f"/api/v1/memories/{item['id']}", json={"text": "x"}), 403,
              "permission_denied")
        _code(bob.post("/api/v1/cubes/alice-shared/share",
                       json={"user": "bob", "permissions": ["write"]}), 403,
              "permission_denied")
        _code(alice.post("/api/v1/cubes/alice-shared/share",
                         json={"user": "bob", "permissions": ["fly"]}), 422, "invalid_input")
        assert alice.delete("/api/v1/cubes/alice-shared/share/bob").json() == {"removed": True}
        _code(bob.get(f"/api/v1/memories/{item['id']}"), 404, "not_found")


def test_isolation_holds_under_concurrency(url: str, keys: Keys) -> None:
    for key, cube in ((keys.alice, "alice-busy"), (keys.bob, "bob-busy")):
        with _as(url, key) as http:
            assert http.post("/api/v1/cubes", json={"name": cube}).status_code == 201
    leaks: list[str] = []
    errors: list[str] = []

    def work(key: str, mine: str, theirs: str, n: int) -> None:
        with _as(url, key) as http:
            for i in range(n):
                resp = http.post(f"/api/v1/cubes/{mine}/memories",
                                 json={"text": f"{mine} secret number {i}"})
                if resp.status_code != 201:
                    errors.append(resp.text)
                hits = http.post("/api/v1/search",
                                 json={"query": "secret number", "top_k": 50}).json()["hits"]
                leaks.extend(h["item"]["text"] for h in hits if theirs in h["item"]["text"])

    threads = [threading.Thread(target=work, args=a) for a in (
        (keys.alice, "alice-busy", "bob-busy", 12), (keys.bob, "bob-busy", "alice-busy", 12),
        (keys.alice, "alice-busy", "bob-busy", 12), (keys.bob, "bob-busy", "alice-busy", 12))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not leaks
    with _as(url, keys.bob) as bob:
        assert bob.get("/api/v1/cubes/bob-busy/stats").json()["items"] == 24


def test_audit_metrics_and_revocation(url: str, keys: Keys, runtime: MemOS) -> None:
    with _as(url, keys.alice) as alice:
        alice.post("/api/v1/cubes", json={"name": "alice-audit"})
        alice.post("/api/v1/cubes/alice-audit/memories", json={"text": "audited"})
        entries = alice.get("/api/v1/audit", params={"cube": "alice-audit"}).json()["items"]
        assert entries and {e["actor"] for e in entries} == {"alice"}
        assert "add" in {e["op"] for e in entries}
        oldest = alice.get("/api/v1/audit", params={"order": "oldest", "limit": 1}).json()
        assert len(oldest["items"]) == 1 and oldest["next_after_seq"] is not None
        _code(alice.get("/metrics"), 403, "permission_denied")
    with _as(url, keys.admin) as admin:
        assert "memosys_memories" in admin.get("/metrics").text
        everyone = admin.get("/api/v1/audit", params={"limit": 1000}).json()["items"]
        assert {"alice", "bob"} <= {e["actor"] for e in everyone}
    with _as(url, keys.bob) as bob:
        assert bob.get("/api/v1/cubes").status_code == 200
        runtime.revoke_api_key(keys.bob_key_id)
        _code(bob.get("/api/v1/cubes"), 401, "unauthenticated")


def test_client_with_keys(url: str, keys: Keys, runtime: MemOS) -> None:
    with Client(url, api_key=keys.alice) as alice:
        alice.ensure_cube("alice-client")
        [item] = alice.add("alice-client", "Alice plays the cello")
        assert alice.get(item.id).owner == "alice"
    runtime.share_cube("alice-client", "bob", ["read"])
    bob_id, bob_key = runtime.create_api_key("bob")
    with Client(url, api_key=bob_key) as bob:
        assert bob.get(item.id).text == "Alice plays the cello"
        with pytest.raises(PermissionDeniedError):
            bob.update(item.id, text="Bob plays the cello")
        with pytest.raises(NotFoundError):
            bob.get_cube("alice-notes")
    with Client(url, api_key="msk_0123456789abcdef_" + "y" * 40) as forged, \
            pytest.raises(AuthenticationError):
        forged.list_cubes()
