"""The MCP server, driven by the official `mcp` client: in process, over stdio (a real
`memosys mcp` subprocess) and over streamable HTTP (uvicorn on loopback)."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

import memosys
from live_server import LiveServer
from memosys.interface import rest_auth
from memosys.interface.mcp import build_mcp_server
from memosys.interface.mcp_http import http_app
from memosys.models.local_llm import LocalLLM
from memosys.operation.scheduler import MemScheduler, SchedulerConfig
from memosys.system import MemOS

_SRC = str(Path(memosys.__file__).resolve().parents[1])
TOOLS = {"list_cubes", "add_memory", "search_memories", "get_memory", "update_memory",
         "forget_memory", "memory_history", "rollback_memory", "chat", "record_tool_call"}


def _run(client: Client, scenario: Callable[[Client], Awaitable[None]]) -> None:
    async def main() -> None:
        async with client:
            await scenario(client)
    anyio.run(main)


async def _call(client: Client, tool: str, /, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def _error(client: Client, tool: str, /, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return result.content[0].text  # type: ignore[union-attr]


async def _lifecycle(client: Client) -> None:
    """The tool round trip every transport must pass."""
    assert {t.name for t in (await client.list_tools()).tools} >= TOOLS
    added = await _call(client, "add_memory", text="Alice lives in Oslo", cube="alice",
                        tags=["geo"], user="alice")
    [item] = added["items"]
    await _call(client, "add_memory", cube="alice", messages=[
        {"role": "user", "content": "I started learning the cello last week"}])
    hits = (await _call(client, "search_memories", query="where does Alice live",
                        cubes=["alice"], top_k=2))["hits"]
    assert hits[0]["memory"]["id"] == item["id"] and hits[0]["score"] > 0
    assert hits[0]["provenance"]["user"] == "alice"

    updated = await _call(client, "update_memory", memory_id=item["id"],
                          text="Alice lives in Bergen", expected_version=1)
    assert updated["version"] == 2
    conflict = await _error(client, "update_memory", memory_id=item["id"], text="x",
                            expected_version=1)
    assert "conflict" in conflict
    history = (await _call(client, "memory_history", memory_id=item["id"]))["versions"]
    assert [v["text"] for v in history] == ["Alice lives in Oslo", "Alice lives in Bergen"]
    rolled = await _call(client, "rollback_memory", memory_id=item["id"], version=1)
    assert rolled["text"] == "Alice lives in Oslo" and rolled["version"] == 3

    forgotten = await _call(client, "forget_memory", memory_id=item["id"])
    assert forgotten["state"] == "deleted"
    hits = (await _call(client, "search_memories", query="Alice Oslo", cubes=["alice"]))["hits"]
    assert item["id"] not in {h["memory"]["id"] for h in hits}
    assert (await _call(client, "forget_memory", memory_id=item["id"], purge=True))["purged"]
    assert "not_found" in await _error(client, "get_memory", memory_id=item["id"])
    cubes = (await _call(client, "list_cubes"))["cubes"]
    assert [(c["name"], c["active_memories"]) for c in cubes] == [("alice", 1)]


def test_tools_in_process(mos: MemOS) -> None:
    _run(Client(build_mcp_server(mos)), _lifecycle)


def test_errors_and_tool_call_records(mos: MemOS) -> None:
    async def scenario(client: Client) -> None:
        assert "invalid_input" in await _error(client, "search_memories", query=" ")
        assert "invalid_input" in await _error(client, "add_memory", text="a", messages=[
            {"content": "b"}])
        assert "invalid_input" in await _error(client, "add_memory", text="x",
                                               memory_type="gossip")
        assert "not_found" in await _error(client, "rollback_memory", memory_id="nope",
                                           version=1)
        # schema validation by the SDK: a string where an integer belongs
        assert await _error(client, "search_memories", query="q", top_k="many")

        record = await _call(client, "record_tool_call", tool="weather",
                             arguments={"city": "Oslo"}, result="rain, 4°C", session="s1")
        assert record["memory_type"] == "tool_call" and record["tags"] == ["tool:weather"]
        hits = (await _call(client, "search_memories", query="what did the weather tool say",
                            tags=["tool:weather"]))["hits"]
        assert hits[0]["memory"]["id"] == record["id"]
        assert not (await _call(client, "search_memories", query="weather",
                                until="2000-01-01T00:00:00Z"))["hits"]
        full = await _call(client, "get_memory", memory_id=record["id"])
        assert full["metadata"]["arguments"] == {"city": "Oslo"}
        assert full["source"]["session"] == "s1"

    _run(Client(build_mcp_server(mos)), scenario)
    assert mos.stats()["cubes"][0]["items"] == 1  # the failed adds wrote nothing


def test_stdio_subprocess(home: Path) -> None:
    """`memosys mcp` as an MCP client launches it: a separate process on stdin/stdout,
    acting as the user of the API key in its environment."""
    with MemOS.open(home) as mos:
        mos.create_user("alice", role="owner")
        _, key = mos.create_api_key("alice")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "memosys", "mcp", "--home", str(home)],
        env={"PYTHONPATH": os.pathsep.join([_SRC, os.environ.get("PYTHONPATH", "")]),
             "HF_HUB_OFFLINE": "1", "MEMOSYS_API_KEY": key},
    )
    _run(Client(params, read_timeout_seconds=120), _lifecycle)
    with MemOS.open(home) as mos:  # the subprocess's writes are durable in the home
        assert mos.stats("alice")["cubes"][0]["by_state"]["active"] == 1
        assert {e.actor for e in mos.audit_log() if e.op == "add"} == {"alice"}


def test_streamable_http(mos: MemOS) -> None:
    with LiveServer(http_app(mos), lifespan="on") as base:
        _run(Client(f"{base}/mcp"), _lifecycle)


def test_streamable_http_with_explicit_transport(mos: MemOS) -> None:
    """A client that brings its own HTTP client (headers, timeouts), as agents do."""
    with LiveServer(http_app(mos, path="/memory"), lifespan="on") as base:
        async def scenario(client: Client) -> None:
            assert (await _call(client, "list_cubes"))["cubes"] == []

        http = httpx2.AsyncClient(headers={"User-Agent": "test"},
                                  timeout=httpx2.Timeout(30, read=300))
        _run(Client(streamable_http_client(f"{base}/memory", http_client=http)), scenario)


def test_http_open_mode_until_the_first_key(mos: MemOS, monkeypatch) -> None:
    """No keys: loopback clients act as the local admin (a stray key header is ignored, as
    the REST service does); the first key created switches the running server to keys."""
    monkeypatch.setattr(rest_auth, "KEYS_TTL", 0.0)
    app = http_app(mos)

    async def remote() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.post("/mcp", json={})

    refused = anyio.run(remote)
    assert refused.status_code == 401 and "loopback" in refused.json()["error"]["message"]

    async def sees_all_cubes(client: Client) -> None:
        assert [c["name"] for c in (await _call(client, "list_cubes"))["cubes"]] == ["c"]

    mos.create_cube("c")
    with LiveServer(app, lifespan="on") as base:
        url = f"{base}/mcp"
        _run(_keyed(url, "msk_stray"), sees_all_cubes)
        mos.create_user("alice")
        _, key = mos.create_api_key("alice")
        missing = httpx.post(url, json={})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthenticated"

        async def alice_sees_none(client: Client) -> None:
            assert (await _call(client, "list_cubes"))["cubes"] == []

        _run(_keyed(url, key), alice_sees_none)


def _keyed(url: str, key: str | None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # MCP holds response streams open: a long read timeout, as the SDK's own client has
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
    return Client(streamable_http_client(url, http_client=http))


def test_streamable_http_with_api_keys(mos: MemOS) -> None:
    """Each tool call acts as the key's user: checked and audited by the runtime."""
    mos.create_user("alice", role="owner")
    mos.create_user("bob")
    _, alice_key = mos.create_api_key("alice")
    bob_id, bob_key = mos.create_api_key("bob")
    _, bob_reader = mos.create_api_key("bob", scopes=["read"])
    mos.create_cube("alice", owner="alice")
    mos.create_cube("bob", owner="bob")
    app = http_app(mos)
    with LiveServer(app, lifespan="on") as base:
        url = f"{base}/mcp"
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
            refused = httpx.post(url, json={}, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] in ("unauthenticated", "invalid_input")
        found: dict[str, Any] = {}

        async def as_alice(client: Client) -> None:
            [item] = (await _call(client, "add_memory", text="Alice's door code is 4321",
                                  cube="alice"))["items"]
            found["id"] = item["id"]
            assert [c["name"] for c in (await _call(client, "list_cubes"))["cubes"]] == ["alice"]

        async def as_bob(client: Client) -> None:
            assert [c["name"] for c in (await _call(client, "list_cubes"))["cubes"]] == ["bob"]
            hits = (await _call(client, "search_memories", query="door code"))["hits"]
            assert hits == []
            assert "not_found" in await _error(client, "get_memory", memory_id=found["id"])
            assert "not_found" in await _error(client, "forget_memory", memory_id=found["id"])
            await _call(client, "add_memory", text="Bob likes chess", cube="bob")

        async def as_bob_reader(client: Client) -> None:
            assert (await _call(client, "search_memories", query="chess"))["hits"]
            denied = await _error(client, "add_memory", text="x", cube="bob")
            assert "permission_denied" in denied

        _run(_keyed(url, alice_key), as_alice)
        _run(_keyed(url, bob_key), as_bob)
        _run(_keyed(url, bob_reader), as_bob_reader)
        mos.revoke_api_key(bob_id)
        assert httpx.post(url, json={}, headers={
            "Authorization": f"Bearer {bob_key}"}).status_code == 401

    assert mos.get(found["id"]).state.value == "active"  # bob's forget changed nothing
    adds = [e for e in mos.audit_log(actor="alice") if e.op == "add"]
    assert adds and adds[0].items[0][0] == found["id"]


def test_chat_tool_answers_with_memory(mos: MemOS, local: LocalLLM) -> None:
    """The chat tool on the real local model: the second call recalls the first."""
    mos.llm = local
    mos.scheduler = MemScheduler(mos, SchedulerConfig(background=False))

    async def scenario(client: Client) -> None:
        first = await _call(client, "chat", message="My name is Zorblax.", max_tokens=16,
                            user="u1", session="s1")
        assert first["text"] and len(first["remembered"]) == 2
        assert mos.scheduler.run_pending() >= 1  # the queued extraction, run now
        second = await _call(client, "chat", message="What is my name?", max_tokens=16,
                             session="s2")
        assert "Zorblax" in second["text"]
        used = second["memories_used"]
        assert used and all(m["form"] in ("plaintext", "activation") and m["reason"]
                            for m in used)
        assert mos.scheduler.recent_decisions(1)[0].id == second["scheduling_id"]
        assert second["usage"]["prompt_tokens"] > 0
        assert "invalid_input" in await _error(client, "chat")

    _run(Client(build_mcp_server(mos)), scenario)
