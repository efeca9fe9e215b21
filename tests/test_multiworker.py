"""Two real `memosys serve` processes on one PostgreSQL database behave as one service
(issue 10, item 3): a write through one is read through the other, an update is never
hidden by a stale cache, concurrent adds through both are all stored exactly once, and
queued extraction jobs are processed exactly once by two concurrent `memosys worker`s."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import memosys
from memosys.config import Settings
from memosys.system import MemOS
from pg_fixture import SERVER as PG

_SRC = str(Path(memosys.__file__).resolve().parents[1])


@dataclass
class Service:
    a: httpx.Client
    b: httpx.Client
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "memosys", *args]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 240  # two processes load the embedder on a busy machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"memosys serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"memosys serve did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("multiworker")
    pg_url = PG.new_database()
    setup = MemOS(Settings.load(home, database_url=pg_url), embedder=embedder)
    try:
        setup.create_user("alice", role="owner")
        _, key = setup.create_api_key("alice")
    finally:
        setup.close()
    env = {**os.environ, "MEMOSYS_HOME": str(home), "MEMOSYS_DATABASE_URL": pg_url,
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
               [_SRC, os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for tag in "ab":
            port = _free_port()
            log = home / f"serve-{tag}.log"
            procs.append(subprocess.Popen(
                _cli("serve", "--port", str(port), "--log-level", "warning"), env=env,
                stdout=log.open("wb"), stderr=subprocess.STDOUT))
            urls.append((f"http://127.0.0.1:{port}", log))
        for (url, log), proc in zip(urls, procs, strict=True):
            _wait_healthy(url, proc, log)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=urls[0][0], headers=headers, timeout=120) as a, \
                httpx.Client(base_url=urls[1][0], headers=headers, timeout=120) as b:
            assert a.post("/api/v1/cubes", json={"name": "shared"}).status_code == 201
            yield Service(a, b, env)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _add(http: httpx.Client, text: str, **options: object) -> dict:
    resp = http.post("/api/v1/cubes/shared/memories", json={"text": text, **options})
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _all(http: httpx.Client) -> list[dict]:
    items: list[dict] = []
    offset: int | None = 0
    while offset is not None:
        page = http.get("/api/v1/cubes/shared/memories",
                        params={"limit": 1000, "offset": offset}).json()
        items += page["items"]
        offset = page["next_offset"]
    return items


def test_a_write_on_one_worker_is_searchable_on_the_other(service: Service) -> None:
    [item] = _add(service.a, "Alice keeps bees on the roof of her house")["items"]
    resp = service.b.post("/api/v1/search", json={"query": "who keeps bees?",
                                                  "cube_ids": ["shared"], "top_k": 3})
    assert resp.status_code == 200, resp.text
    assert resp.json()["hits"][0]["item"]["id"] == item["id"]


def test_an_update_on_one_worker_is_seen_by_the_other(service: Service) -> None:
    [item] = _add(service.a, "Alice's favourite colour is green")["items"]
    assert service.a.get(f"/api/v1/memories/{item['id']}").json()["version"] == 1  # warm A
    updated = service.b.patch(f"/api/v1/memories/{item['id']}",
                              json={"text": "Alice's favourite colour is blue",
                                    "expected_version": 1})
    assert updated.status_code == 200, updated.text
    seen = service.a.get(f"/api/v1/memories/{item['id']}").json()
    assert seen["version"] == 2 and seen["text"] == "Alice's favourite colour is blue"
    stale = service.a.patch(f"/api/v1/memories/{item['id']}",
                            json={"text": "lost update", "expected_version": 1})
    assert stale.status_code == 409  # A does not act on the version it saw before
    hits = service.a.post("/api/v1/search", json={"query": "favourite colour",
                                                  "cube_ids": ["shared"]}).json()["hits"]
    assert [h["item"]["text"] for h in hits if h["item"]["id"] == item["id"]] == [
        "Alice's favourite colour is blue"]


def test_concurrent_adds_through_both_workers_are_stored_exactly_once(
        service: Service) -> None:
    acked: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def load(http: httpx.Client, tag: str) -> None:
        for i in range(20):
            resp = http.post("/api/v1/cubes/shared/memories",
                             json={"text": f"concurrent note {tag}-{i}"})
            with lock:
                if resp.status_code == 201:
                    acked.append(resp.json()["items"][0]["id"])
                else:
                    failures.append(resp.text)

    threads = [threading.Thread(target=load, args=(http, tag))
               for http, tag in ((service.a, "a"), (service.b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(acked) == 40
    texts = Counter(i["text"] for i in _all(service.b)
                    if i["text"].startswith("concurrent note "))
    assert set(texts) == {f"concurrent note {t}-{i}" for t in "ab" for i in range(20)}
    assert set(texts.values()) == {1}
    assert {i["id"] for i in _all(service.a)} >= set(acked)


def test_background_jobs_are_processed_exactly_once(service: Service) -> None:
    queued = [
        _add(service.a, "I adopted a beagle called Rex. My sister lives in Lyon.",
             infer=True, wait=False)["job"],
        _add(service.b, "I work as a nurse in Leeds. I love hiking on weekends.",
             infer=True, wait=False)["job"],
    ]
    assert all(job and job["state"] == "queued" for job in queued), queued
    before = {i["id"] for i in _all(service.a)}
    # two job workers race for the queue: each job must be claimed by exactly one
    workers = [subprocess.Popen(_cli("worker", "--once", "--extractor", "rules"),
                                env=service.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    finished = [service.b.get(f"/api/v1/jobs/{job['id']}").json() for job in queued]
    assert [j["state"] for j in finished] == ["done", "done"], finished
    assert [j["attempts"] for j in finished] == [1, 1], finished
    claims = sum(out.count(f"job {job['id']}:") for out in outputs for job in queued)
    assert claims == 2, outputs
    extracted = [i for i in _all(service.a) if i["id"] not in before]
    assert extracted, "the rules extractor found nothing"
    texts = Counter(i["text"] for i in extracted)
    assert set(texts.values()) == {1}, texts


def test_each_event_is_delivered_once_by_two_workers_dispatchers(service: Service) -> None:
    """Both `memosys serve` processes run a webhook dispatcher on the shared outbox
    (docs/events.md): every event reaches the receiver, none twice."""
    from webhook_receiver import Receiver

    with Receiver() as receiver:
        made = service.a.post("/api/v1/webhooks", json={"url": receiver.url,
                                                        "cubes": ["shared"],
                                                        "kinds": ["created"]})
        assert made.status_code == 201, made.text
        ids = [_add(http, f"evented note {i}")["items"][0]["id"]
               for i in range(10) for http in (service.a, service.b)]
        receiver.wait_for(20, timeout=120)
        time.sleep(2)  # a duplicate would arrive now
        events = receiver.events()
    assert sorted(e["memory_id"] for e in events) == sorted(ids)
    assert len({e["id"] for e in events}) == 20
    hook = made.json()["id"]
    deliveries = service.b.get(f"/api/v1/webhooks/{hook}/deliveries",
                               params={"limit": 100}).json()["items"]
    assert len(deliveries) == 20 and {d["attempts"] for d in deliveries} == {1}
