"""Identity and permissions through the Python API: tenants, keys, sharing, visibility."""

from __future__ import annotations

import threading

import pytest

from conftest import BACKENDS
from memosys.config import Settings
from memosys.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from memosys.infra.governance import LOCAL_ADMIN, Principal
from memosys.system import MemOS


@pytest.fixture(params=sorted(BACKENDS))
def mos(request: pytest.FixtureRequest, home, tmp_path, embedder):
    """The runtime on each storage backend: permissions live in both."""
    runtime = MemOS(Settings.load(home), vault=BACKENDS[request.param](tmp_path),
                    embedder=embedder)
    yield runtime
    runtime.close()


@pytest.fixture
def tenants(mos: MemOS):
    """Two users with their own cubes and keys; A has two memories."""
    mos.create_user("alice", role="owner")
    mos.create_user("bob", role="owner")
    _, ka = mos.create_api_key("alice")
    _, kb = mos.create_api_key("bob")
    a = mos.as_actor(mos.authenticate(ka))
    b = mos.as_actor(mos.authenticate(kb))
    a.create_cube("alice-notes")
    b.create_cube("bob-notes")
    items = a.add("alice-notes", "Alice's locker code is 4412")
    items += a.add("alice-notes", "Alice is planning a surprise party for Carol")
    b.add("bob-notes", "Bob keeps his bike in the garage")
    return a, b, items


def test_plain_runtime_is_the_local_admin(mos: MemOS) -> None:
    assert mos.actor == LOCAL_ADMIN and mos.actor.is_admin
    mos.create_cube("c")
    [item] = mos.add("c", "no tenants needed for embedded use")
    assert mos.get(item.id).text == item.text


def test_authenticate_returns_the_principal_of_a_key(mos: MemOS) -> None:
    mos.create_user("carol", role="member")
    key_id, secret = mos.create_api_key("carol", scopes=["read"], agent="planner")
    p = mos.authenticate(secret)
    assert p == Principal("carol", "member", frozenset({"read"}), "planner", key_id)
    stored = mos.list_api_keys("carol")[0]
    assert stored.secret_hash != secret and secret not in repr(stored)
    for bad in ("", "msk_nope", secret[:-1] + ("A" if secret[-1] != "A" else "B"), 42):
        with pytest.raises(AuthenticationError):
            mos.authenticate(bad)  # type: ignore[arg-type]
    # A view shares the runtime's scheduler (one usage history, one worker), even when it
    # is made before anything asked for the scheduler.
    assert mos.as_actor(p).scheduler is mos.scheduler


def test_user_b_cannot_see_or_touch_user_a_memories(tenants) -> None:
    a, b, items = tenants
    target = items[0].id
    hidden = f"no memory {target!r}"
    for call in (lambda: b.get(target), lambda: b.history(target),
                 lambda: b.update(target, text="pwned"), lambda: b.delete(target),
                 lambda: b.purge([target]), lambda: b.rollback(target, 1),
                 lambda: b.feedback(target, "wrong"), lambda: b.feedback(target, 1.0)):
        with pytest.raises(NotFoundError) as info:
            call()
        assert str(info.value) == hidden  # the same answer as for an unknown id
    with pytest.raises(NotFoundError) as unknown:
        b.get("01a00000-0000-7000-8000-000000000000")
    assert "no memory" in str(unknown.value)
    for call in (lambda: b.search("locker code", ["alice-notes"]),
                 lambda: b.list("alice-notes"), lambda: b.stats("alice-notes"),
                 lambda: b.add("alice-notes", "x"), lambda: b.snapshot("alice-notes")):
        with pytest.raises(NotFoundError):
            call()
    assert all(h.item.cube_id != items[0].cube_id for h in b.search("locker code party"))
    assert [c.name for c in b.list_cubes()] == ["bob-notes"]
    assert [c["name"] for c in b.stats()["cubes"]] == ["bob-notes"]
    assert a.get(target).text == "Alice's locker code is 4412"  # untouched


def test_read_only_share_allows_search_not_update(tenants) -> None:
    a, b, items = tenants
    a.share_cube("alice-notes", "bob", ["read"])
    hits = b.search("locker code", ["alice-notes"])
    assert hits and hits[0].item.id == items[0].id
    assert b.get(items[0].id).text == items[0].text
    for call in (lambda: b.update(items[0].id, text="changed"), lambda: b.delete(items[0].id),
                 lambda: b.add("alice-notes", "more"), lambda: b.purge(items[0].id),
                 lambda: b.share_cube("alice-notes", "bob", ["write"])):
        with pytest.raises(PermissionDeniedError):
            call()
    a.share_cube("alice-notes", "bob", ["read", "write"])
    assert b.update(items[0].id, text="Alice's locker code is 9001").version == 2
    with pytest.raises(PermissionDeniedError):
        b.delete(items[0].id)
    a.unshare_cube("alice-notes", "bob")
    with pytest.raises(NotFoundError):
        b.get(items[0].id)


def test_revoked_key_stops_immediately_even_for_existing_views(mos: MemOS) -> None:
    mos.create_user("dave")
    key_id, secret = mos.create_api_key("dave")
    view = mos.as_actor(mos.authenticate(secret))
    view.create_cube("dave-cube")
    view.add("dave-cube", "Dave likes jazz")
    mos.revoke_api_key(key_id)
    with pytest.raises(AuthenticationError):
        mos.authenticate(secret)
    with pytest.raises(AuthenticationError):
        view.search("jazz", ["dave-cube"])
    with pytest.raises(AuthenticationError):
        view.add("dave-cube", "more")


def test_a_user_manages_only_their_own_keys(tenants, mos: MemOS) -> None:
    a, b, _ = tenants
    key_id, secret = a.create_api_key("alice", scopes=["read"])
    assert mos.authenticate(secret).user_id == "alice"
    with pytest.raises(PermissionDeniedError):
        a.create_api_key("bob")
    with pytest.raises(PermissionDeniedError):
        a.create_api_key("alice", scopes=["read", "admin"])
    with pytest.raises(NotFoundError):
        b.revoke_api_key(key_id)
    with pytest.raises(PermissionDeniedError):
        b.create_user("mallory", role="admin")
    a.revoke_api_key(key_id)
    with pytest.raises(AuthenticationError):
        mos.authenticate(secret)


def test_key_scopes_and_reader_role_cap_permissions(mos: MemOS) -> None:
    mos.create_user("erin", role="owner")
    mos.create_user("rita", role="reader")
    _, full = mos.create_api_key("erin")
    _, read_only = mos.create_api_key("erin", scopes=["read"])
    erin = mos.as_actor(mos.authenticate(full))
    erin.create_cube("erin-cube")
    [item] = erin.add("erin-cube", "Erin's train leaves at 9")
    limited = mos.as_actor(mos.authenticate(read_only))
    assert limited.get(item.id).id == item.id
    with pytest.raises(PermissionDeniedError):
        limited.update(item.id, text="x")
    erin.share_cube("erin-cube", "rita", ["read", "write"])
    _, rk = mos.create_api_key("rita")
    rita = mos.as_actor(mos.authenticate(rk))
    assert rita.get(item.id).id == item.id
    with pytest.raises(PermissionDeniedError):
        rita.update(item.id, text="readers never write")
    with pytest.raises(PermissionDeniedError):
        rita.create_cube("rita-cube")


def test_visibility_private_cube_public(tenants, mos: MemOS) -> None:
    a, b, _ = tenants
    [private] = a.add("alice-notes", "Alice's private diary entry", visibility="private")
    [public] = a.add("alice-notes", "Alice's public talk is on Friday", visibility="public")
    a.share_cube("alice-notes", "bob", ["read"])
    seen = {h.item.id for h in b.search("Alice diary talk", ["alice-notes"], top_k=20)}
    assert public.id in seen and private.id not in seen
    assert private.id not in {i.id for i in b.list("alice-notes")}
    with pytest.raises(NotFoundError):
        b.get(private.id)
    assert a.get(private.id).id == private.id
    a.unshare_cube("alice-notes", "bob")
    # public memories are readable by every user, even without access to the cube
    assert b.get(public.id).id == public.id
    assert public.id in {h.item.id for h in b.search("public talk Friday", top_k=20)}
    assert b.stats()["cubes"][0]["name"] == "bob-notes"


def test_owner_of_new_memories_is_the_actor(tenants) -> None:
    a, _, items = tenants
    assert items[0].owner == "alice"
    with pytest.raises(PermissionDeniedError):
        a.add("alice-notes", "forged", owner="bob")
    with pytest.raises(PermissionDeniedError):
        a.create_cube("for-bob", owner="bob")


def test_user_and_role_validation(mos: MemOS) -> None:
    with pytest.raises(ValidationError):
        mos.create_user("bad name!")
    with pytest.raises(ValidationError):
        mos.create_user("frank", role="god")
    mos.create_user("frank")
    with pytest.raises(ValidationError):
        mos.create_api_key("frank", scopes=["everything"])
    with pytest.raises(NotFoundError):
        mos.create_api_key("nobody")


def test_deleting_a_user_stops_their_keys(mos: MemOS) -> None:
    mos.create_user("gina")
    _, secret = mos.create_api_key("gina")
    view = mos.as_actor(mos.authenticate(secret))
    mos.delete_user("gina")
    with pytest.raises(AuthenticationError):
        view.list_cubes()
    with pytest.raises(AuthenticationError):
        mos.authenticate(secret)


def test_isolation_holds_under_concurrent_tenants(mos: MemOS) -> None:
    views = {}
    for name in ("u1", "u2", "u3"):
        mos.create_user(name, role="owner")
        views[name] = mos.as_actor(mos.authenticate(mos.create_api_key(name)[1]))
        views[name].create_cube(f"{name}-cube")
    leaks: list[str] = []

    def work(name: str) -> None:
        view = views[name]
        for n in range(5):
            view.add(f"{name}-cube", f"secret number {n} of {name}")
            for hit in view.search("secret number"):
                if hit.item.owner != name:
                    leaks.append(f"{name} saw {hit.item.owner}")

    threads = [threading.Thread(target=work, args=(n,)) for n in views]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert leaks == []
    assert all(len(v.list(f"{n}-cube")) == 5 for n, v in views.items())
