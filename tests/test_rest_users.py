"""Users and API keys over HTTP (rest_governance): an admin creates a user and a key, the
key works, revoking it makes the next request a 401, and a non-admin gets a 403."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from live_server import LiveServer
from memosys.config import Settings
from memosys.interface.server import create_app
from memosys.system import MemOS


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[MemOS]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("rest-users")), embedder=embedder)
    yield mos
    mos.close()


@pytest.fixture(scope="module")
def admin_key(runtime: MemOS) -> str:
    runtime.create_user("root", role="admin")
    return runtime.create_api_key("root", scopes=["read", "write", "admin"])[1]


@pytest.fixture(scope="module")
def url(runtime: MemOS, admin_key: str) -> Iterator[str]:
    with LiveServer(create_app(runtime)) as base:
        yield base


def _as(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_admin_manages_users_and_keys(url: str, admin_key: str) -> None:
    with _as(url, admin_key) as admin:
        resp = admin.post("/api/v1/users", json={"name": "carol", "role": "owner"})
        assert resp.status_code == 201, resp.text
        assert resp.json()["id"] == "carol" and resp.json()["role"] == "owner"
        assert admin.post("/api/v1/users", json={"name": "carol"}).status_code == 409
        users = admin.get("/api/v1/users").json()["items"]
        assert {"root", "carol"} <= {u["id"] for u in users}
        made = admin.post("/api/v1/users/carol/keys", json={"scopes": ["read", "write"]})
        assert made.status_code == 201, made.text
        key = made.json()
        assert key["user_id"] == "carol" and key["secret"]
    with _as(url, key["secret"]) as carol:
        assert carol.post("/api/v1/cubes", json={"name": "carols"}).status_code == 201
        assert carol.get("/api/v1/cubes/carols").status_code == 200
        with _as(url, admin_key) as admin:
            revoked = admin.delete(f"/api/v1/keys/{key['id']}")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        after = carol.get("/api/v1/cubes/carols")
        assert after.status_code == 401 and after.json()["error"]["code"] == "unauthenticated"


def test_non_admin_is_refused(runtime: MemOS, url: str) -> None:
    runtime.create_user("dave")
    dave_id, dave_key = runtime.create_api_key("dave")
    with _as(url, dave_key) as dave:
        for resp in (dave.post("/api/v1/users", json={"name": "eve"}),
                     dave.get("/api/v1/users"),
                     dave.post("/api/v1/users/root/keys", json={})):
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["code"] == "permission_denied"
        more = dave.post("/api/v1/users/dave/keys", json={"scopes": ["read", "admin"]})
        assert more.status_code == 403  # no key with more scopes than one's own
    assert "eve" not in {u.id for u in runtime.list_users()}
