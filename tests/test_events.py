"""Change events (issue 13, item 4): every memory change is an event in the same
transaction; webhooks get signed deliveries from a durable dispatcher, retried with backoff
and logged, while writes go on even when a receiver hangs; an SSE stream on the REST
service; both storage backends."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import BACKENDS
from helpers import make_cube, make_item, unit_vectors
from live_server import LiveServer
from memosys.config import Settings
from memosys.errors import ConflictError, NotFoundError, ValidationError
from memosys.infra.events import SCRUBBED, verify
from memosys.infra.events_delivery import DeliveryPolicy
from memosys.infra.vault.base import Vault, Write
from memosys.interface.server import create_app
from memosys.system import MemOS
from webhook_receiver import Receiver

FAST = DeliveryPolicy(base_delay=0.05, max_delay=0.2, poll=0.05, timeout=5.0, max_attempts=3)


def _until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture(params=sorted(BACKENDS))
def backend_mos(request: pytest.FixtureRequest, tmp_path: Path, embedder) -> Iterator[MemOS]:
    runtime = MemOS(Settings.load(tmp_path / "home"), vault=BACKENDS[request.param](tmp_path),
                    embedder=embedder)
    yield runtime
    runtime.close()


# --- the outbox ----------------------------------------------------------------------------
def test_every_memory_change_is_an_event_in_commit_order(backend_mos: MemOS) -> None:
    mos = backend_mos
    mos.create_cube("c")
    [item] = mos.add("c", "Alice likes green tea", memory_type="preference")
    mos.update(item.id, text="Alice likes black tea")
    mos.lifecycle.archive(item.id)
    mos.delete(item.id)
    mos.rollback(item.id, 2)
    mos.events.publish("consolidated", "c", [item.id], {"run": "r1", "merged": 1})
    mos.purge(item.id)

    events = mos.events.list().events
    assert [e.kind for e in events] == ["created", "updated", "state_changed", "deleted",
                                        "rolled_back", "consolidated", "purged"]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert len({e.id for e in events}) == len(events)
    assert all(e.memory_id == item.id and e.actor == "local" for e in events)
    assert [e.version for e in events[:5]] == [1, 2, 3, 4, 5]
    assert events[2].payload["prev_state"] == "active"
    assert events[2].payload["state"] == "archived"
    assert events[5].payload == {"run": "r1", "merged": 1, "memory_ids": [item.id],
                                 "text_purged": True}
    # paging: `next` continues where a page stopped
    page = mos.events.list(since=0, limit=3)
    assert [e.seq for e in page.events] == [e.seq for e in events[:3]]
    assert [e.seq for e in mos.events.list(since=page.next).events] == \
        [e.seq for e in events[3:]]
    assert [e.kind for e in mos.events.list(kinds="deleted,purged").events] == \
        ["deleted", "purged"]


def test_a_failed_transaction_leaves_no_event(backend_mos: MemOS) -> None:
    vault: Vault = backend_mos.vault
    cube = vault.create_cube(make_cube())
    [v1, v2] = unit_vectors(2, seed=3)
    first = make_item(cube, "first memory")
    vault.commit(cube.id, [Write(first, "add", None, v1)])
    before = vault.events.last_seq()
    with pytest.raises(ConflictError):  # a stale version fails the whole batch
        vault.commit(cube.id, [Write(make_item(cube, "second"), "add", None, v2),
                               Write(first, "update", 7)])
    assert vault.events.last_seq() == before
    assert [e.kind for e in vault.events.events_after(0, 10)] == ["created"]


def test_purge_scrubs_text_from_earlier_events(backend_mos: MemOS) -> None:
    mos = backend_mos
    mos.create_cube("c")
    secret = "my locker code is Zyxqvplugh"
    [item] = mos.add("c", secret, tags=["zyxqvplugh"])
    mos.update(item.id, text="my locker code is Quarkblorft")
    [other] = mos.add("c", "an unrelated memory")
    mos.events.publish("consolidated", "c", [item.id, other.id],
                       {"summary": f"merged: {secret}", "count": 2})
    assert any(e.payload.get("text") == secret for e in mos.events.list().events)

    mos.purge(item.id)
    dumped = json.dumps([e.to_json() for e in mos.events.list().events])
    for word in ("Zyxqvplugh", "zyxqvplugh", "Quarkblorft"):
        assert word not in dumped
    kinds = {e.kind: e for e in mos.events.list().events}
    assert kinds["purged"].payload == {"op": "purge"}
    assert kinds["consolidated"].payload["summary"] == SCRUBBED
    assert kinds["consolidated"].payload["count"] == 2
    # the other memory's event keeps its text
    assert any(e.payload.get("text") == "an unrelated memory" for e in kinds.values())


def test_import_is_evented_and_a_replacing_import_purges(mos: MemOS, tmp_path: Path) -> None:
    mos.create_cube("src")
    mos.add("src", "Bob plays the cello")
    from memosys.infra.exchange_export import export_cube
    from memosys.infra.exchange_import import import_archive

    archive = tmp_path / "src.cube"
    export_cube(mos, "src", archive)
    since = mos.events.last_seq()
    import_archive(mos, archive, name="copy")
    imported = mos.events.list(since=since).events
    assert [(e.kind, e.op) for e in imported] == [("created", "import")]
    since = mos.events.last_seq()
    import_archive(mos, archive, name="copy", on_conflict="replace")
    replaced = mos.events.list(since=since).events
    assert [(e.kind, e.op) for e in replaced] == [("purged", "purge"), ("created", "import")]
    first_import = mos.events.list(since=0, cube="copy").events[0]
    assert first_import.seq == imported[0].seq and first_import.payload["text_purged"]


def test_published_events_are_checked(mos: MemOS) -> None:
    mos.create_cube("c")
    with pytest.raises(ValidationError):
        mos.events.publish("created", "c", [], {})  # storage kinds come from storage only
    with pytest.raises(ValidationError):
        mos.events.publish("Bad Kind", "c", [], {})
    with pytest.raises(ValidationError):
        mos.events.publish("consolidated", "c", [], {"blob": "x" * 20_000})
    with pytest.raises(NotFoundError):
        mos.events.publish("consolidated", "nope", [], {})


# --- permissions ---------------------------------------------------------------------------
def test_callers_see_only_events_of_cubes_they_may_read(mos: MemOS) -> None:
    for name in ("alice", "bob"):
        mos.create_user(name, role="owner")
    alice = mos.as_actor(mos.authenticate(mos.create_api_key("alice")[1]))
    bob = mos.as_actor(mos.authenticate(mos.create_api_key("bob")[1]))
    alice.create_cube("alice-notes")
    bob.create_cube("bob-notes")
    alice.add("alice-notes", "alice's shared note")
    alice.add("alice-notes", "alice's private note", visibility="private")
    bob.add("bob-notes", "bob's note")

    assert {e.payload["text"] for e in bob.events.list().events} == {"bob's note"}
    with pytest.raises(NotFoundError):
        bob.events.list(cube="alice-notes")
    with pytest.raises(NotFoundError):
        bob.events.add_webhook("http://127.0.0.1:9/x", cubes=["alice-notes"])

    alice.share_cube("alice-notes", "bob", ["read"])
    seen = {e.payload.get("text") for e in bob.events.list().events}
    assert seen == {"bob's note", "alice's shared note"}  # never another's private memory
    assert "alice's private note" in {e.payload.get("text") for e in alice.events.list().events}
    assert len(mos.events.list().events) == 3  # the admin sees all


# --- webhooks ------------------------------------------------------------------------------
def test_webhook_receiver_gets_signed_events(mos: MemOS) -> None:
    mos.create_cube("c")
    mos.create_cube("quiet")
    with Receiver() as receiver:
        hook = mos.events.add_webhook(receiver.url, secret="s3cret-s3cret-s3cret",
                                      cubes=["c"], kinds=["created", "deleted"])
        mos.events.start_dispatcher(FAST)
        [item] = mos.add("c", "Carol moved to Lisbon")
        mos.add("quiet", "not for this webhook")
        mos.update(item.id, tags=["travel"])  # `updated`: filtered out
        mos.delete(item.id)
        requests = receiver.wait_for(2)
        time.sleep(0.3)  # nothing else arrives
        assert len(receiver.requests) == 2
    # deliveries run on a worker pool, so they may arrive in any order: `seq` orders them
    requests = sorted(requests, key=lambda r: json.loads(r[1])["seq"])
    first_headers, body = requests[0]
    h = {k.lower(): v for k, v in first_headers.items()}
    expected = "sha256=" + hmac.new(b"s3cret-s3cret-s3cret",
                                    h["x-memosys-timestamp"].encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    assert h["x-memosys-signature"] == expected
    assert verify("s3cret-s3cret-s3cret", first_headers, body)
    assert not verify("another-secret-entirely", first_headers, body)
    assert not verify("s3cret-s3cret-s3cret", first_headers, body + b" ")
    # a replay much later is refused on its timestamp, even with a valid signature
    assert not verify("s3cret-s3cret-s3cret", first_headers, body,
                      now=int(h["x-memosys-timestamp"]) + 3600)
    events = [json.loads(b) for _, b in requests]
    assert [e["kind"] for e in events] == ["created", "deleted"]
    assert h["x-memosys-event-id"] == events[0]["id"]
    assert events[0]["data"]["text"] == "Carol moved to Lisbon"
    [delivered] = mos.events.deliveries(hook.id, state="delivered", limit=1)
    assert delivered.attempts == 1 and delivered.last_status == 200


def test_failing_receiver_is_retried_and_the_log_shows_attempts(mos: MemOS) -> None:
    mos.create_cube("c")
    with Receiver(lambda n: 500 if n == 1 else 200) as receiver:
        hook = mos.events.add_webhook(receiver.url)
        mos.events.start_dispatcher(FAST)
        mos.add("c", "Dan likes chess")
        requests = receiver.wait_for(2)
        _until(lambda: mos.events.deliveries(hook.id, state="delivered"))
    assert requests[0][1] == requests[1][1]  # the same event, byte for byte
    h1 = {k.lower(): v for k, v in requests[0][0].items()}
    h2 = {k.lower(): v for k, v in requests[1][0].items()}
    assert h1["x-memosys-event-id"] == h2["x-memosys-event-id"]
    assert (h1["x-memosys-attempt"], h2["x-memosys-attempt"]) == ("1", "2")
    log = sorted(mos.events.attempts(hook.id), key=lambda a: a.attempt)
    assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, 200)]
    assert log[0].error == "HTTP 500" and log[1].error is None
    assert all(a.duration_ms >= 0 for a in log)


def test_dead_letter_after_max_attempts_then_retry(mos: MemOS) -> None:
    mos.create_cube("c")
    outcome = {"code": 503}
    with Receiver(lambda _n: outcome["code"]) as receiver:
        hook = mos.events.add_webhook(receiver.url)
        mos.events.start_dispatcher(FAST)
        mos.add("c", "Eve reads novels")
        [dead] = _until(lambda: mos.events.deliveries(hook.id, state="dead"))
        assert dead.attempts == FAST.max_attempts and dead.last_status == 503
        assert len(receiver.requests) == FAST.max_attempts
        outcome["code"] = 204
        mos.events.retry_delivery(hook.id, dead.id)
        _until(lambda: mos.events.deliveries(hook.id, state="delivered"))
    assert [a.status_code for a in sorted(mos.events.attempts(hook.id),
                                          key=lambda a: a.attempt)] == [503, 503, 503, 204]


def test_writes_proceed_while_the_receiver_hangs(mos: MemOS) -> None:
    mos.create_cube("c")
    release = threading.Event()

    def hang(_n: int) -> int:
        release.wait(60)
        return 200

    with Receiver(hang) as receiver:
        mos.events.add_webhook(receiver.url)
        mos.events.start_dispatcher(DeliveryPolicy(poll=0.05, timeout=60, workers=1))
        mos.add("c", "first memory")
        receiver.wait_for(1)  # the dispatcher is now stuck inside a call to the receiver
        ids = [mos.add("c", f"memory number {i}")[0].id for i in range(5)]
        mos.update(ids[0], text="memory number zero, edited")
        mos.delete(ids[1])
        assert not release.is_set() and len(receiver.requests) == 1  # still hanging
        assert len(mos.list("c")) == 5
        release.set()
        receiver.wait_for(8)
    assert len({e["id"] for e in receiver.events()}) == 8


def test_delivery_survives_a_restart(home: Path, embedder) -> None:
    with Receiver() as receiver:
        first = MemOS(Settings.load(home), embedder=embedder)
        first.create_cube("c")
        hook = first.events.add_webhook(receiver.url)
        first.add("c", "written while no dispatcher runs")
        first.close()
        second = MemOS(Settings.load(home), embedder=embedder)
        try:
            second.events.start_dispatcher(FAST)
            receiver.wait_for(1)
            assert receiver.events()[0]["data"]["text"] == "written while no dispatcher runs"
            assert second.events.webhook(hook.id).cursor == second.events.last_seq()
        finally:
            second.close()


def test_two_dispatchers_on_one_postgres_deliver_each_event_once(tmp_path: Path,
                                                                 embedder) -> None:
    from conftest import _postgres_vault

    first = MemOS(Settings.load(tmp_path / "a"), vault=_postgres_vault(), embedder=embedder)
    url = first.vault.url  # type: ignore[attr-defined]
    from memosys.infra.vault.postgres import PostgresVault

    second = MemOS(Settings.load(tmp_path / "b"), vault=PostgresVault(url, pool_size=4),
                   embedder=embedder)
    try:
        first.create_cube("c")
        with Receiver() as receiver:
            first.events.add_webhook(receiver.url)
            policy = DeliveryPolicy(poll=0.02, workers=4)
            first.events.start_dispatcher(policy)
            second.events.start_dispatcher(policy)
            for i in range(12):
                (first if i % 2 else second).add("c", f"memory {i}")
            receiver.wait_for(12)
            time.sleep(0.5)
            ids = [e["id"] for e in receiver.events()]
        assert len(ids) == 12 and len(set(ids)) == 12
    finally:
        second.close()
        first.close()


# --- REST: listing, webhooks and the SSE stream ----------------------------------------------
def _sse(lines: Iterator[str], want: int) -> list[dict[str, str]]:
    """Read `want` SSE events (comments and blank keepalives skipped)."""
    frames: list[dict[str, str]] = []
    frame: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in frame:
                frames.append(frame)
                if len(frames) == want:
                    return frames
            frame = {}
        elif line.startswith(":"):
            frames.append({"comment": line}) if want < 0 else None
            if want < 0:
                return frames
        else:
            key, _, value = line.partition(":")
            frame[key] = value.removeprefix(" ")
    return frames


def test_sse_stream_resumes_with_last_event_id(mos: MemOS) -> None:
    mos.create_cube("c")
    with LiveServer(create_app(mos)) as base:
        [a] = mos.add("c", "Frank owns a boat")
        with httpx.Client(base_url=base, timeout=30) as client:
            with client.stream("GET", "/api/v1/events/stream", params={"since": 0}) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                lines = resp.iter_lines()
                [first] = _sse(lines, 1)
                mos.update(a.id, text="Frank owns two boats")  # arrives while streaming
                [second] = _sse(lines, 1)
            assert first["event"] == "created" and second["event"] == "updated"
            assert json.loads(second["data"])["data"]["text"] == "Frank owns two boats"
            assert int(second["id"]) > int(first["id"])
            mos.delete(a.id)
            with client.stream("GET", "/api/v1/events/stream",
                               headers={"Last-Event-ID": first["id"]}) as resp:
                frames = _sse(resp.iter_lines(), 2)
            assert [f["event"] for f in frames] == ["updated", "deleted"]
            with client.stream("GET", "/api/v1/events/stream",
                               params={"heartbeat": 0.2}) as resp:
                [beat] = _sse(resp.iter_lines(), -1)
            assert beat["comment"] == ": keepalive"
            missing = client.get("/api/v1/events/stream", params={"cube": "nope"})
            assert missing.status_code == 404

            page = client.get("/api/v1/events", params={"since": 0, "limit": 2}).json()
            assert [e["kind"] for e in page["events"]] == ["created", "updated"]
            rest = client.get("/api/v1/events", params={"since": page["next"]}).json()
            assert [e["kind"] for e in rest["events"]] == ["deleted"]


def test_webhooks_over_rest(mos: MemOS) -> None:
    mos.create_cube("c")
    with Receiver(lambda n: 500 if n == 1 else 200) as receiver, \
            LiveServer(create_app(mos)) as base, httpx.Client(base_url=base, timeout=30) as c:
        made = c.post("/api/v1/webhooks", json={"url": receiver.url, "kinds": ["created"]})
        assert made.status_code == 201, made.text
        hook = made.json()
        assert hook["secret"].startswith("whsec_")
        listed = c.get("/api/v1/webhooks").json()["items"]
        assert [h["id"] for h in listed] == [hook["id"]] and listed[0]["secret"] is None
        bad = c.post("/api/v1/webhooks", json={"url": "ftp://x/y"})
        assert bad.status_code == 400
        mos.events.start_dispatcher(FAST)
        c.post("/api/v1/cubes/c/memories", json={"text": "Gina paints"})
        requests = receiver.wait_for(2)
        assert verify(hook["secret"], requests[1][0], requests[1][1])
        _until(lambda: c.get(f"/api/v1/webhooks/{hook['id']}/deliveries",
                             params={"state": "delivered"}).json()["items"])
        log = c.get(f"/api/v1/webhooks/{hook['id']}/attempts").json()["items"]
        assert sorted(a["status_code"] for a in log) == [200, 500]
        paused = c.patch(f"/api/v1/webhooks/{hook['id']}", json={"active": False}).json()
        assert paused["active"] is False
        assert c.delete(f"/api/v1/webhooks/{hook['id']}").json() == {"removed": True}
        assert c.get(f"/api/v1/webhooks/{hook['id']}").status_code == 404


# --- CLI and retention -------------------------------------------------------------------
def test_cli_events_and_webhooks(home: Path, embedder) -> None:
    from typer.testing import CliRunner

    from memosys.interface.cli import app

    runner = CliRunner()

    def cli(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--home", str(home)])
        assert result.exit_code == 0, result.output + str(result.exception or "")
        return result.stdout

    cli("cubes", "create", "notes")
    with Receiver() as receiver:
        hook = json.loads(cli("webhooks", "add", receiver.url, "--kinds", "created", "--json"))
        assert hook["secret"]
        cli("add", "Hana keeps bees", "-c", "notes")
        page = json.loads(cli("events", "list", "--json"))
        assert [e["kind"] for e in page["events"]] == ["created"]
        cli("events", "dispatch", "--seconds", "3")
        [(headers, body)] = receiver.wait_for(1)
    assert verify(hook["secret"], headers, body)
    [delivery] = json.loads(cli("webhooks", "deliveries", hook["id"], "--json"))
    assert delivery["state"] == "delivered"
    [attempt] = json.loads(cli("webhooks", "attempts", hook["id"], "--json"))
    assert attempt["status_code"] == 200
    assert [h["id"] for h in json.loads(cli("webhooks", "list", "--json"))] == [hook["id"]]
    cli("webhooks", "remove", hook["id"])
    assert json.loads(cli("events", "prune", "--older-than-days", "0", "--json")) == \
        {"removed": 1}


def test_prune_keeps_what_a_webhook_still_needs(mos: MemOS) -> None:
    mos.create_cube("c")
    mos.add("c", "before the webhook")
    hook = mos.events.add_webhook("http://127.0.0.1:9/never")  # nothing listens there
    mos.add("c", "after the webhook")
    assert mos.events.store.prune(time.time() + 1) == 1  # the first: no webhook needs it
    assert [e.payload["text"] for e in mos.events.list().events] == ["after the webhook"]
    mos.events.remove_webhook(hook.id)
    assert mos.events.store.prune(time.time() + 1) == 1


def test_bench_events_reports_its_table_and_json(tmp_path: Path) -> None:
    from rich.console import Console

    from memosys.bench.events import run_events_bench

    out = tmp_path / "events.json"
    run_events_bench(n=20, deliveries=3, json_file=out, rounds=1,
                     console=Console(file=open(tmp_path / "table.txt", "w")))  # noqa: SIM115
    found = json.loads(out.read_text())
    assert found["commits"] == 30
    assert found["capture"]["commits_per_s_on"] > 0
    assert found["hanging_receiver"]["requests_held_open"] >= 1
    assert found["delivery_latency_ms"]["delivered"] == 3
    assert "capture on / off" in (tmp_path / "table.txt").read_text()


def test_webhook_input_is_checked(mos: MemOS) -> None:
    mos.create_cube("c")
    for bad in ({"url": "not a url"}, {"url": "file:///etc/passwd"},
                {"url": "http://127.0.0.1:9/x", "secret": "short"},
                {"url": "http://127.0.0.1:9/x", "kinds": ["exploded"]}):
        with pytest.raises(ValidationError):
            mos.events.add_webhook(**bad)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        mos.events.add_webhook("http://127.0.0.1:9/x", cubes=["no-such-cube"])
    with pytest.raises(NotFoundError):
        mos.events.remove_webhook("no-such-webhook")
    hook = mos.events.add_webhook("http://127.0.0.1:9/x")
    assert mos.events.webhook(hook.id).secret == ""  # never shown again
    with pytest.raises(ValidationError):
        mos.events.deliveries(hook.id, state="lost")
