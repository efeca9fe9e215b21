"""MemOS.chat against the real SmolLM2 model: recall across calls, streaming, write-back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memosys.errors import LLMError, NotFoundError, ValidationError
from memosys.models.local_llm import LocalLLM
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
