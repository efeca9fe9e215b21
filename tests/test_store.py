"""MemStore between two installations over real HTTP on loopback: publish on one service,
subscribe from the other, pull increments, refuse the unauthorised, stop on unpublish."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from live_server import LiveServer
from memosys.config import Settings
from memosys.errors import AuthenticationError, NotFoundError
from memosys.infra.store import MemStore, StoreClient, pull, subscribe, subscriptions
from memosys.interface.server import ServerConfig, create_app
from memosys.models.embed import Embedder
from memosys.system import MemOS


@pytest.fixture
def publisher(tmp_path: Path, embedder: Embedder) -> Iterator[MemOS]:
    runtime = MemOS(Settings.load(tmp_path / "publisher"), embedder=embedder)
    runtime.create_user("sub", role="member")
    runtime.create_user("stranger", role="member")
    yield runtime
    runtime.close()


@pytest.fixture
def subscriber(tmp_path: Path, embedder: Embedder) -> Iterator[MemOS]:
    runtime = MemOS(Settings.load(tmp_path / "subscriber"), embedder=embedder)
    yield runtime
    runtime.close()


@pytest.fixture
def url(publisher: MemOS) -> Iterator[str]:
    with LiveServer(create_app(publisher, ServerConfig(open_access=False))) as base:
        yield base


def _history(mos: MemOS, cube: str) -> dict[str, list[tuple[int, str, str]]]:
    """text of the first version -> [(version, op, text)], independent of ids."""
    out = {}
    for item in mos.list(cube, {"states": []}, limit=1000):
        records = mos.history(item.id)
        out[records[0].item.text] = [(r.item.version, r.op, r.item.text) for r in records]
    return out


def test_publish_subscribe_pull_unpublish(
    publisher: MemOS, subscriber: MemOS, url: str
) -> None:
    publisher.create_cube("team")
    [menu] = publisher.add("team", "The team lunch is on Fridays")
    publisher.add("team", "Deploys happen on Tuesdays")
    MemStore(publisher).publish("team", description="team knowledge")
    _, key = publisher.create_api_key("sub", scopes=["read"])

    with StoreClient(url, key) as client:
        [listed] = client.publications()
        assert (listed["name"], listed["description"]) == ("team", "team knowledge")
    first = subscribe(subscriber, url, "team", key, as_name="team-copy")
    assert (first.action, first.memories_added, first.versions_added) == ("created", 2, 2)
    assert _history(subscriber, "team-copy") == _history(publisher, "team")
    [sub_state] = subscriptions(subscriber)
    assert sub_state.remote_clock == publisher.vault.get_cube("team").clock

    # new versions on the publisher: a pull brings exactly those
    publisher.update(menu.id, text="The team lunch moved to Thursdays")
    [new] = publisher.add("team", "The office is closed on Dec 24")
    local_clock = subscriber.vault.get_cube("team-copy").clock
    report = pull(subscriber, "team-copy")  # the saved key is used
    assert (report.memories_added, report.memories_updated, report.versions_added) == (1, 1, 2)
    changed = subscriber.vault.changes_since(subscriber.vault.get_cube("team-copy").id,
                                             local_clock)
    assert sorted(c.current.text for c in changed) == [
        "The office is closed on Dec 24", "The team lunch moved to Thursdays"]
    assert _history(subscriber, "team-copy") == _history(publisher, "team")
    assert subscriber.search("when is lunch", "team-copy", top_k=1)[0].item.text == \
        "The team lunch moved to Thursdays"
    again = pull(subscriber, "team-copy")
    assert again.versions_added == 0  # nothing new: nothing arrives

    # a purge at the source reaches the subscriber too
    publisher.purge(new.id)
    assert pull(subscriber, "team-copy").pruned == 1

    # unauthorised pulls are refused
    with pytest.raises(AuthenticationError):
        pull(subscriber, "team-copy", api_key="msk_" + "0" * 40)
    with StoreClient(url, None) as anonymous, pytest.raises(AuthenticationError):
        anonymous.publications()
    _, other = publisher.create_api_key("stranger", scopes=["read"])
    with StoreClient(url, other) as stranger, pytest.raises(NotFoundError):
        stranger.download("team", 0, Path(subscriber.settings.home) / "x.mip")

    # read-only: the subscriber's key may read the cube but not write to it
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        assert http.get("/api/v1/cubes/team/memories").status_code == 200
        resp = http.post("/api/v1/cubes/team/memories", json={"text": "sneaky"})
        assert resp.status_code == 403, resp.text

    # unpublishing stops further pulls and withdraws the read access subscribing gave
    MemStore(publisher).unpublish("team")
    with pytest.raises(NotFoundError, match="publication"):
        pull(subscriber, "team-copy")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        assert http.get("/api/v1/cubes/team/memories").status_code == 404
    assert [t for t, _ in _history(subscriber, "team-copy").items()] != []  # copy stays


def test_publish_a_fixed_version(publisher: MemOS, subscriber: MemOS, url: str) -> None:
    publisher.create_cube("rules")
    [rule] = publisher.add("rules", "Code review needs one approval")
    clock = publisher.vault.get_cube("rules").clock
    publisher.update(rule.id, text="Code review needs two approvals")
    MemStore(publisher).publish("rules", until=clock)
    _, key = publisher.create_api_key("sub", scopes=["read"])
    subscribe(subscriber, url, "rules", key)
    [copy] = subscriber.list("rules")
    assert (copy.text, copy.version) == ("Code review needs one approval", 1)
    assert pull(subscriber, "rules").versions_added == 0  # pinned: nothing newer


def test_store_over_rest_needs_share_to_publish(publisher: MemOS, url: str) -> None:
    publisher.create_cube("private-notes")
    _, key = publisher.create_api_key("sub", scopes=["read"])
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        resp = http.post("/api/v1/store/publications", json={"cube": "private-notes"})
        assert resp.status_code == 404  # cannot even see it
        assert http.get("/api/v1/store/publications/private-notes").status_code == 404
        assert http.get("/api/v1/store/publications").json() == {"items": []}


def test_store_cli(publisher: MemOS, url: str, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from memosys.interface.cli import app

    runner = CliRunner()
    pub_home, sub_home = str(publisher.settings.home), str(tmp_path / "cli-sub")
    publisher.create_cube("wiki")
    publisher.add("wiki", "The wifi password rotates monthly")
    res = runner.invoke(app, ["store", "publish", "wiki", "--home", pub_home, "--json"])
    assert res.exit_code == 0, res.output
    _, key = publisher.create_api_key("sub", scopes=["read"])
    res = runner.invoke(app, ["store", "list", "--url", url, "--api-key", key, "--json"])
    assert [p["name"] for p in json.loads(res.output)["publications"]] == ["wiki"]
    res = runner.invoke(app, ["store", "subscribe", url, "wiki", "--home", sub_home,
                              "--api-key", key, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["memories_added"] == 1
    publisher.add("wiki", "Printer paper is in room 4")
    res = runner.invoke(app, ["store", "pull", "wiki", "--home", sub_home, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["versions_added"] == 1
    res = runner.invoke(app, ["store", "list", "--home", sub_home, "--json"])
    [sub] = json.loads(res.output)["subscriptions"]
    assert (sub["publication"], sub["url"]) == ("wiki", url)
    res = runner.invoke(app, ["store", "pull", "wiki", "--home", sub_home, "--api-key", "bad"])
    assert res.exit_code != 0
    res = runner.invoke(app, ["store", "unpublish", "wiki", "--home", pub_home])
    assert res.exit_code == 0
    res = runner.invoke(app, ["store", "pull", "wiki", "--home", sub_home])
    assert res.exit_code == 3  # not found: no longer published


def test_a_locally_changed_copy_is_refused_not_diverged(
    publisher: MemOS, subscriber: MemOS, url: str
) -> None:
    from memosys.errors import ConflictError

    publisher.create_cube("faq")
    [item] = publisher.add("faq", "Support answers within a day")
    MemStore(publisher).publish("faq")
    _, key = publisher.create_api_key("sub", scopes=["read"])
    subscribe(subscriber, url, "faq", key)
    [copy] = subscriber.list("faq")
    subscriber.update(copy.id, text="Support answers within an hour")  # a local edit
    publisher.update(item.id, text="Support answers within two days")
    before = subscriber.history(copy.id)
    with pytest.raises(ConflictError, match="read-only"):
        pull(subscriber, "faq")
    assert subscriber.history(copy.id) == before
