"""MemOS.chat against the real SmolLM2 model: recall across calls, streaming, write-back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from memosys.errors import LLMError, NotFoundError, ValidationError
from memosys.models.local_llm import LocalLLM
from memosys.models.openai_llm import OpenAICompatibleLLM
from memosys.operation.chat import ChatResult, ChatStream
from memosys.operation.scheduler import MemScheduler, SchedulerConfig
from memosys.system import MemOS, Message


@pytest.fixture
def chat_mos(mos: MemOS, local: LocalLLM) -> Iterator[MemOS]:
    mos.llm = local
    mos.scheduler = MemScheduler(mos, SchedulerConfig(background=False))
    yield mos


def test_second_chat_recalls_what_the_first_said(chat_mos: MemOS) -> None:
    first = chat_mos.chat([{"role": "user", "content": "My name is Zorblax."}], max_tokens=16,
                          user="u1", session="s1")
    assert isinstance(first, ChatResult)
    assert first.cube_ids == [first.cube_id]
    assert len(first.written) == 2  # the user turn and the answer, stored as episodes
    stored = chat_mos.vault.get_many(first.written)
    assert {i.source.role for i in stored.values()} == {"user", "assistant"}
    assert chat_mos.job(first.job_id or "").state == "queued"  # extraction runs in background
    assert chat_mos.scheduler.run_pending() >= 1
    assert chat_mos.job(first.job_id or "").state == "done"

    second = chat_mos.chat([Message(role="user", content="What is my name?")], max_tokens=16,
                           session="s2")
    assert "Zorblax" in second.text
    used = [d for d in second.decisions if d.form != "skipped"]
    # The episode itself, or the persona fact extracted from it ("U1's name is Zorblax.",
    # pinned: the user's identity is always relevant).
    recalled = [d for d in used if "Zorblax" in chat_mos.get(d.memory_id).text]
    assert recalled and all(d.reason for d in used)
    # The model's own earlier answer is history, not memory.
    assert all(d.form == "skipped" for d in second.decisions
               if chat_mos.get(d.memory_id).source.role == "assistant")
    assert second.usage.prompt_tokens and second.usage.completion_tokens
    assert chat_mos.get(recalled[0].memory_id).stats.used_in_answer_count >= 1
    records = chat_mos.scheduler.recent_decisions(5)
    assert records[0].id == second.scheduling_id
    assert {d["memory_id"] for d in records[0].as_dict()["decisions"]} >= {
        d.memory_id for d in used}


def test_stream_yields_the_answer_and_then_the_result(chat_mos: MemOS) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = chat_mos.chat(messages, max_tokens=12, remember=False)
    stream = chat_mos.chat(messages, max_tokens=12, remember=False, stream=True)
    assert isinstance(stream, ChatStream)
    with pytest.raises(LLMError):
        _ = stream.result  # not finished yet
    chunks = list(stream)
    assert len(chunks) > 1 and "".join(chunks) == whole.text == stream.result.text
    assert stream.result.written == [] and stream.result.ttft_s is not None


def test_chat_rejects_bad_input(chat_mos: MemOS) -> None:
    with pytest.raises(ValidationError):
        chat_mos.chat([])
    with pytest.raises(ValidationError):
        chat_mos.chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}])
    with pytest.raises(ValidationError):
        chat_mos.chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValidationError):
        chat_mos.chat([{"role": "user", "content": "hi"}], max_tokens=0)
    with pytest.raises(NotFoundError):
        chat_mos.chat([{"role": "user", "content": "hi"}], cube_ids=["nope"])
    assert chat_mos.vault.count(chat_mos._filter(
        [c.id for c in chat_mos.list_cubes()], None)) == 0  # nothing was written


@pytest.fixture(scope="module")
def openai_server(local: LocalLLM) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real OpenAI-compatible HTTP server on loopback, answering with the local model."""
    from test_llm import _make_handler

    log: list[dict[str, Any]] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(local, log))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield f"http://{host}:{port}/v1", log
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_chat_with_an_openai_compatible_model(
    mos: MemOS, local: LocalLLM, openai_server: tuple[str, list[dict[str, Any]]]
) -> None:
    base_url, requests = openai_server
    mos.llm = OpenAICompatibleLLM("smollm2", base_url=base_url)
    mos.scheduler = MemScheduler(mos, SchedulerConfig(background=False))
    mos.create_cube("r")
    mos.add("r", "Always answer in one short sentence.", memory_type="rule")
    mos.add("r", "The user's cat is called Pistache.")
    messages = [{"role": "user", "content": "What is my cat called?"}]
    result = mos.chat(messages, cube_ids=["r"], max_tokens=12)
    assert isinstance(result, ChatResult) and result.model == "openai:smollm2"
    forms = {d.section: (d.form, d.reason) for d in result.decisions}
    assert forms["rules"][0] == "plaintext" and "local model only" in forms["rules"][1]
    assert forms["retrieved"][0] == "plaintext"
    sent = requests[-1]["messages"]
    assert sent[0]["role"] == "system" and "Pistache" in sent[0]["content"]
    assert "Always answer in one short sentence." in sent[0]["content"]
    assert sent[1:] == messages
    assert result.text == local.chat(sent, max_new_tokens=12).text  # what the server said
    assert result.usage.prompt_tokens and result.activation is None
    streamed = mos.chat(messages, cube_ids=["r"], max_tokens=12, stream=True, remember=False)
    assert "".join(streamed) == streamed.result.text
    assert len(mos.get(result.written[0]).text) > 0
