"""Chat with memory over HTTP, with the real SmolLM2 model: the official `openai` client on
`/v1/chat/completions` (streaming and not) and memosys's own `/api/v1/chat`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from live_server import LiveServer
from memosys.config import Settings
from memosys.errors import NotFoundError
from memosys.interface.openai_compat import chat_cube
from memosys.interface.server import create_app
from memosys.models.local_llm import LocalLLM
from memosys.operation.scheduler import MemScheduler, SchedulerConfig
from memosys.system import MemOS


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, embedder, local: LocalLLM
            ) -> Iterator[MemOS]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("chat")), embedder=embedder)
    mos.llm = local
    mos.scheduler = MemScheduler(mos, SchedulerConfig(background=False))
    yield mos
    mos.close()


@pytest.fixture(scope="module")
def url(runtime: MemOS) -> Iterator[str]:
    with LiveServer(create_app(runtime)) as base:
        yield base


@pytest.fixture
def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)


def test_openai_streaming_chat_recalls_the_first_call(oai: openai.OpenAI,
                                                      runtime: MemOS) -> None:
    first = oai.chat.completions.create(
        model="memosys", user="zed", max_tokens=16, stream=True,
        messages=[{"role": "user", "content": "My name is Zorblax."}])
    chunks = list(first)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    cube = runtime.get_cube(chat_cube("zed"))  # the user's own chat cube
    assert "My name is Zorblax." in [i.text for i in runtime.list(cube.name)]

    second = oai.chat.completions.create(
        model="memosys", user="zed", max_tokens=16, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "What is my name?"}])
    parts = list(second)
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert "Zorblax" in text
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens > 0
    # another user's chat does not see it
    other = oai.chat.completions.create(
        model="memosys", user="ann", max_tokens=16,
        messages=[{"role": "user", "content": "What is my name?"}])
    assert "Zorblax" not in (other.choices[0].message.content or "")
    used = other.model_extra["memosys"]["decisions"]
    assert all(d["cube_id"] != cube.id for d in used)


def test_openai_chat_without_stream_reports_memory_use(oai: openai.OpenAI) -> None:
    oai.chat.completions.create(model="memosys", user="kim", max_tokens=8,
                                messages=[{"role": "user", "content": "I live in Reykjavik."}])
    resp = oai.chat.completions.create(
        model="memosys", user="kim", max_tokens=16,
        messages=[{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": [{"type": "text", "text": "Where do I live?"}]}])
    assert resp.object == "chat.completion" and resp.choices[0].message.role == "assistant"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    info = resp.model_extra["memosys"]
    assert len(info["written"]) == 2 and info["scheduling_id"]
    assert any(d["form"] == "plaintext" for d in info["decisions"])


def test_openai_chat_rejects_bad_requests(oai: openai.OpenAI, runtime: MemOS) -> None:
    before = runtime.stats()["cubes"]
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="memosys", messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model="memosys", n=2,
                                    messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model="memosys", messages=[])
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="memosys", stop=["\n"],
                                    messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.UnprocessableEntityError):  # images are not text
        oai.chat.completions.create(model="memosys", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    with pytest.raises(openai.BadRequestError):  # streaming: still a plain error
        list(oai.chat.completions.create(model="memosys", stream=True, messages=[
            {"role": "user", "content": "  "}]))
    assert runtime.stats()["cubes"] == before  # nothing written


def test_api_chat_json_stream_and_decisions(url: str) -> None:
    with httpx.Client(base_url=url, timeout=300) as http:
        http.post("/api/v1/cubes", json={"name": "quinn"})
        http.post("/api/v1/cubes/quinn/memories",
                  json={"text": "Quinn's favourite colour is teal.", "memory_type": "fact"})
        answer = http.post("/api/v1/chat", json={
            "messages": [{"role": "user", "content": "What is Quinn's favourite colour?"}],
            "cube_ids": ["quinn"], "max_tokens": 12, "remember": False}).json()
        assert answer["text"] and answer["written"] == [] and answer["cube_ids"]
        assert any(d["form"] != "skipped" for d in answer["decisions"])
        events: list[dict] = []
        with http.stream("POST", "/api/v1/chat", json={
                "messages": [{"role": "user", "content": "What is Quinn's favourite colour?"}],
                "cube_ids": ["quinn"], "max_tokens": 12, "remember": False,
                "stream": True}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line.removeprefix("data: ")))
        deltas = "".join(e["delta"] for e in events if "delta" in e)
        assert deltas == events[-1]["result"]["text"] == answer["text"]
        decisions = http.get("/api/v1/scheduler/decisions", params={"limit": 2}).json()
        assert decisions["items"][0]["id"] == events[-1]["result"]["scheduling_id"]
        bad = http.post("/api/v1/chat", json={"messages": [{"role": "user", "content": "x"}],
                                              "cube_ids": ["no-such-cube"]})
        assert bad.status_code == 404 and bad.json()["error"]["code"] == "not_found"


def test_client_chat_and_stream(url: str) -> None:
    from memosys import Client

    with Client(url) as mem:
        mem.ensure_cube("robin")
        mem.add("robin", "Robin's cat is called Miso.")
        whole = mem.chat([{"role": "user", "content": "What is Robin's cat called?"}],
                         cube_ids="robin", max_tokens=12, remember=False)
        assert whole.text and whole.decisions and whole.usage.completion_tokens
        stream = mem.chat([{"role": "user", "content": "What is Robin's cat called?"}],
                          cube_ids="robin", max_tokens=12, remember=False, stream=True)
        assert "".join(stream) == whole.text == stream.result.text
        assert mem.scheduler_decisions(1)[0]["id"] == stream.result.scheduling_id


def test_openai_user_is_the_key_owner(runtime: MemOS, tmp_path_factory) -> None:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("chatkeys")), embedder=runtime.embedder)
    mos.llm = runtime.llm
    mos.scheduler = MemScheduler(mos, SchedulerConfig(background=False))
    mos.create_user("uma")
    mos.create_user("vic")
    _, uma_key = mos.create_api_key("uma")
    _, vic_key = mos.create_api_key("vic")
    with LiveServer(create_app(mos)) as base:
        uma = openai.OpenAI(base_url=f"{base}/v1", api_key=uma_key, max_retries=0)
        vic = openai.OpenAI(base_url=f"{base}/v1", api_key=vic_key, max_retries=0)
        uma.chat.completions.create(model="memosys", max_tokens=8, user="vic",  # ignored
                                    messages=[{"role": "user", "content": "My name is Zorblax."}])
        assert mos.get_cube(chat_cube("uma")).owner == "uma"
        with pytest.raises(NotFoundError):  # the `user` field did not pick vic's cube
            mos.get_cube(chat_cube("vic"))
        answer = vic.chat.completions.create(
            model="memosys", max_tokens=12, messages=[
                {"role": "user", "content": "What is my name?"}])
        info = answer.model_extra["memosys"]
        uma_cube = mos.get_cube(chat_cube("uma")).id
        assert all(d["cube_id"] != uma_cube for d in info["decisions"])
        assert "Zorblax" not in (answer.choices[0].message.content or "")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0
                          ).chat.completions.create(
                model="memosys", messages=[{"role": "user", "content": "hi"}])
    mos.close()


def test_chat_forwards_to_an_upstream_openai_server(url: str, runtime: MemOS,
                                                    tmp_path_factory) -> None:
    """A memosys whose model is `openai:<model>` forwards generation to an upstream
    OpenAI-compatible server — here another memosys's /v1 (the local model behind it) —
    while memory stays on this side."""
    settings = Settings.load(tmp_path_factory.mktemp("forward"), llm="openai:memosys",
                             llm_base_url=f"{url}/v1", llm_api_key="local")
    mos = MemOS(settings, embedder=runtime.embedder)
    mos.scheduler = MemScheduler(mos, SchedulerConfig(background=False))
    with LiveServer(create_app(mos)) as base:
        oai = openai.OpenAI(base_url=f"{base}/v1", api_key="local", max_retries=0)
        oai.chat.completions.create(model="memosys", user="fay", max_tokens=8, messages=[
            {"role": "user", "content": "My name is Zorblax."}])
        stream = oai.chat.completions.create(model="memosys", user="fay", max_tokens=16,
                                             stream=True, messages=[
                                                 {"role": "user", "content": "What is my name?"}])
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Zorblax" in text
        assert mos.llm.id == "openai:memosys"
        # the recalled memory is this side's: read from fay's cube here, sent upstream
        info = next(c.model_extra["memosys"] for c in chunks
                    if (c.model_extra or {}).get("memosys"))
        fay = mos.get_cube(chat_cube("fay")).id
        used = [mos.get(d["memory_id"]).text for d in info["decisions"]
                if d["form"] == "plaintext" and d["cube_id"] == fay]
        assert "My name is Zorblax." in used
    mos.close()
