"""Export/import over HTTP (rest_exchange): a round trip through a real server, a tampered
archive refused with nothing written, another user's cube invisible."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from exchange_helpers import rewrite
from live_server import LiveServer
from memosys.config import Settings
from memosys.infra.vault.base import ItemFilter
from memosys.interface.server import create_app
from memosys.system import MemOS


@dataclass
class Keys:
    alice: str
    bob: str


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[MemOS]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("rest-exchange")), embedder=embedder)
    yield mos
    mos.close()


@pytest.fixture(scope="module")
def keys(runtime: MemOS) -> Keys:
    runtime.create_user("alice", role="owner")
    runtime.create_user("bob", role="member")
    _, alice = runtime.create_api_key("alice")
    _, bob = runtime.create_api_key("bob")
    return Keys(alice, bob)


@pytest.fixture(scope="module")
def url(runtime: MemOS, keys: Keys) -> Iterator[str]:
    with LiveServer(create_app(runtime)) as base:
        yield base


def _as(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _texts(mos: MemOS, cube: str) -> list[str]:
    found = mos.vault.get_cube(cube)
    return sorted(i.text for i in mos.vault.list_items(ItemFilter(cube_ids=(found.id,)),
                                                       limit=1000))


@pytest.fixture(scope="module")
def archive(url: str, keys: Keys) -> bytes:
    with _as(url, keys.alice) as http:
        assert http.post("/api/v1/cubes", json={"name": "trip"}).status_code == 201
        for text in ("Alice likes green tea", "Alice moved to Paris in 2021"):
            resp = http.post("/api/v1/cubes/trip/memories", json={"text": text})
            assert resp.status_code in (200, 201), resp.text
        resp = http.get("/api/v1/cubes/trip/export")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/zip"
    return resp.content


def test_round_trip_over_http(runtime: MemOS, url: str, keys: Keys, archive: bytes) -> None:
    with _as(url, keys.alice) as http:
        resp = http.post("/api/v1/cubes/import", params={"as": "trip-copy"}, content=archive,
                         headers={"Content-Type": "application/zip"})
        assert resp.status_code == 200, resp.text
        report = resp.json()
        assert report["action"] == "created" and report["memories_added"] == 2
        again = http.post("/api/v1/cubes/import", params={"as": "trip-copy"}, content=archive)
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        merged = http.post("/api/v1/cubes/import", content=archive,
                           params={"as": "trip-copy", "on_conflict": "merge"})
        assert merged.status_code == 200 and merged.json()["memories_added"] == 0
        plain = http.get("/api/v1/cubes/trip/export", params={"format": "jsonl"})
        assert plain.status_code == 200 and len(plain.text.strip().splitlines()) == 2
    assert _texts(runtime, "trip-copy") == _texts(runtime, "trip") == [
        "Alice likes green tea", "Alice moved to Paris in 2021"]


def test_tampered_archive_is_refused_and_writes_nothing(
        runtime: MemOS, url: str, keys: Keys, archive: bytes, tmp_path: Path) -> None:
    src = tmp_path / "good.mip"
    src.write_bytes(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        data = z.read("memories.jsonl").replace(b"green", b"black")
    bad = rewrite(src, tmp_path / "bad.mip", replace={"memories.jsonl": data}).read_bytes()
    cubes = len(runtime.vault.list_cubes())
    with _as(url, keys.alice) as http:
        resp = http.post("/api/v1/cubes/import", params={"as": "tampered"}, content=bad)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "archive_tampered"
        junk = http.post("/api/v1/cubes/import", params={"as": "junk"}, content=b"not a zip")
        assert junk.status_code == 400 and junk.json()["error"]["code"] == "invalid_archive"
    assert len(runtime.vault.list_cubes()) == cubes


def test_another_users_cube_cannot_be_exported(url: str, keys: Keys, archive: bytes) -> None:
    with _as(url, keys.bob) as http:
        resp = http.get("/api/v1/cubes/trip/export")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        plain = http.get("/api/v1/cubes/trip/export", params={"format": "jsonl"})
        assert plain.status_code == 404


def test_import_respects_the_request_size_limit(runtime: MemOS, keys: Keys,
                                                archive: bytes) -> None:
    from memosys.interface.server import ServerConfig

    app = create_app(runtime, ServerConfig(max_body_bytes=len(archive) - 1))
    with LiveServer(app) as small, _as(small, keys.alice) as http:
        resp = http.post("/api/v1/cubes/import", params={"as": "too-big"}, content=archive)
    assert resp.status_code == 413
    assert "too-big" not in {c.name for c in runtime.vault.list_cubes()}
