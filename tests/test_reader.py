"""MemReader: extraction, reconciliation, intents, documents, jobs (docs/reader.md).

The LLM-free paths run on the real runtime (SQLite + MiniLM). LLM paths use the real local
SmolLM2 model (loaded once per session) or tiny real implementations of the LLM protocol
that misbehave on purpose (garbage output, a crash mid-job).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from memosys.bench.reader import load_set, matches, score
from memosys.errors import LLMError, ValidationError
from memosys.interface.chunking import chunk_document
from memosys.interface.extract import RuleExtractor, Turn
from memosys.interface.intents import parse_intent
from memosys.interface.llm_extract import LLMExtractor
from memosys.interface.reader import MemReader
from memosys.models.llm import ChatResult
from memosys.system import MemOS
from memosys.types import MemoryState

MAY8 = "2023-05-08T13:56:00Z"


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def msg(text: str, when: str = MAY8, name: str = "Alice", mid: str | None = None,
        role: str = "user") -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "name": name, "content": text, "timestamp": when}
    if mid:
        out["id"] = mid
    return out


@pytest.fixture
def cube(mos: MemOS) -> str:
    mos.create_cube("alice", owner="alice")
    return "alice"


def derived(mos: MemOS, cube: str, states: Sequence[str] = ("active",)) -> list[Any]:
    return mos.list(cube, {"memory_types": ["fact", "preference", "event", "rule", "persona"],
                           "states": list(states)})


class GarbageLLM:
    """A real LLM-protocol implementation whose answers are never usable."""

    id = "test:garbage"

    def __init__(self, text: str = "}}{{ ]] <<not json>> ~~ \x00") -> None:
        self.text = text
        self.calls = 0

    def chat(self, messages: Sequence[Any], *, max_new_tokens: int = 256,
             temperature: float = 0.0, stop: Any = None, seed: int | None = None) -> ChatResult:
        self.calls += 1
        return ChatResult(self.text, 10, 10, "stop")

    def stream(self, messages: Sequence[Any], **kw: Any) -> Any:
        yield self.chat(messages, **kw).text


class EchoLLM(GarbageLLM):
    """Answers in the line format with the message itself as a fact; can crash the process
    (KeyboardInterrupt, like a kill) after a number of calls."""

    id = "test:echo"

    def __init__(self, crash_after: int | None = None) -> None:
        super().__init__()
        self.crash_after = crash_after

    def chat(self, messages: Sequence[Any], **kw: Any) -> ChatResult:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        said = messages[-1]["content"].split(": ", 1)[-1]  # "Alice: I ..." -> "I ..."
        return ChatResult(f"fact: {said}", 10, 10, "stop")


class FailingLLM(GarbageLLM):
    id = "test:down"

    def chat(self, messages: Sequence[Any], **kw: Any) -> ChatResult:
        raise LLMError("endpoint unreachable")


class JudgeLLM(GarbageLLM):
    """A capable-looking model that always answers the reconciliation question the same."""

    id = "openai:judge"

    def __init__(self, answer: str) -> None:
        super().__init__(answer)


# --- extraction and time ---------------------------------------------------------------------
def test_relative_date_resolved_to_absolute(mos: MemOS, cube: str) -> None:
    stored = mos.add(cube, messages=[msg("I went to the support group yesterday.", mid="m1")],
                     user="alice", session="s1", infer=True)
    episode = stored[0]
    [decision] = stored.result.decisions
    assert decision.op == "ADD"
    event = mos.get(decision.item_id)
    assert event.memory_type.value == "event"
    assert event.valid_from == at("2023-05-07")
    assert event.text == "Alice went to the support group on 7 May 2023."
    assert event.derived_from == [episode.id]
    assert event.source.message_ids == ["m1"] and event.source.session == "s1"
    assert event.metadata["about"] == "Alice"
    assert event.metadata["reader"]["op"] == "add"
    assert event.metadata["reader"]["time_text"] == "yesterday"
    assert mos.get(episode.id).metadata["reader"]["status"] == "done"  # the raw turn stays


def test_text_with_infer_is_kept_as_an_episode(mos: MemOS, cube: str) -> None:
    out = mos.add(cube, "Please always answer me in French.", user="alice", infer=True)
    assert out[0].memory_type.value == "episode"
    [d] = out.result.decisions
    assert d.memory_type == "rule"
    assert mos.get(d.item_id).text == "alice's rule: always answer alice in French."


def test_rule_extractor_types_and_skips_small_talk() -> None:
    turns = [Turn(t, "Bob", timestamp=at("2022-11-20")) for t in (
        "Hey, how are you?", "I love hiking and I'm a nurse.", "Please never call me before 9am.",
        "lol yeah", "My sister Emma lives in Boston.")]
    got = [(c.memory_type.value, c.text) for c in RuleExtractor().extract(turns).candidates]
    assert got == [("preference", "Bob loves hiking."), ("persona", "Bob is a nurse."),
                   ("rule", "Bob's rule: never call Bob before 9am."),
                   ("fact", "Bob's sister Emma lives in Boston.")]


def test_labelled_set_and_matching() -> None:
    data = load_set()
    assert len(data) >= 40 and any(not m.expected for m in data)
    result = score(RuleExtractor(), data)
    assert 0.0 < result.precision <= 1.0 and 0.0 < result.recall <= 1.0
    assert set(result.splits) == {"dev", "heldout", "heldout2"}
    [cand] = RuleExtractor().extract([data[0].turn]).candidates
    assert matches(cand, data[0].expected[0])


# --- reconciliation --------------------------------------------------------------------------
def test_preference_change_invalidates_old_and_keeps_history(mos: MemOS, cube: str) -> None:
    first = mos.add(cube, messages=[msg("I prefer tea over coffee.", "2023-03-01T09:00:00Z")],
                    infer=True)
    tea_id = first.result.decisions[0].item_id
    second = mos.add(cube, messages=[msg("I now prefer coffee in the mornings.",
                                         "2023-06-01T09:00:00Z")], infer=True)
    [decision] = second.result.decisions
    assert decision.op == "DELETE" and decision.target_id == tea_id
    active = [i for i in derived(mos, cube) if i.memory_type.value == "preference"]
    assert [i.text for i in active] == ["Alice now prefers coffee in the mornings."]
    coffee = active[0]
    tea = mos.get(tea_id)
    assert coffee.supersedes == tea_id
    assert tea.state == MemoryState.INVALIDATED
    assert tea.valid_to == coffee.valid_from == at("2023-06-01T09:00:00")
    assert tea.metadata["reader"]["invalidated_by"] == coffee.id
    assert coffee.metadata["reader"]["op"] == "delete" and coffee.metadata["reader"]["reason"]
    states = ["active", "invalidated"]
    march = mos.search("what does Alice drink?", cube, 5,
                       {"valid_at": at("2023-04-01"), "states": states,
                        "memory_types": ["preference"]})
    assert [h.item.id for h in march] == [tea_id]
    july = mos.search("what does Alice drink?", cube, 5,
                      {"valid_at": at("2023-07-01"), "states": states,
                       "memory_types": ["preference"]})
    assert [h.item.id for h in july] == [coffee.id]
    # the same statement again is a no-op
    again = mos.add(cube, messages=[msg("I now prefer coffee in the mornings.",
                                        "2023-06-02T09:00:00Z")], infer=True)
    assert [d.op for d in again.result.decisions] == ["NOOP"]


def test_llm_decider_used_when_capable_and_rules_when_it_fails(mos: MemOS, cube: str) -> None:
    mos.add(cube, messages=[msg("I love hiking.")], infer=True)
    mos.reader = MemReader(mos, extractor="rules", decider="llm",
                           llm=JudgeLLM('{"op": "DELETE", "id": 1, "reason": "changed"}'))
    out = mos.add(cube, messages=[msg("I love cooking.")], infer=True)
    [d] = out.result.decisions
    assert (d.op, d.decided_by, d.reason) == ("DELETE", "llm:openai:judge", "changed")
    mos.reader = MemReader(mos, extractor="rules", decider="llm", llm=GarbageLLM())
    out = mos.add(cube, messages=[msg("I love swimming.")], infer=True)
    assert [(d.op, d.decided_by) for d in out.result.decisions] == [("ADD", "rules")]


# --- intents ---------------------------------------------------------------------------------
def test_intent_parsing() -> None:
    assert parse_intent("remember that I'm vegetarian").kind == "remember"
    assert parse_intent("Please remember: my flat is on floor 3.").body == "my flat is on floor 3"
    forget = parse_intent("forget my old address")
    assert (forget.kind, forget.body, forget.historical) == ("forget", "my old address", True)
    assert parse_intent("What do you know about me?").kind == "recall"
    assert parse_intent("what do you know about my job?").body == "my job"
    assert parse_intent("I forgot my keys").kind == "none"
    assert parse_intent("Remove the onions from the recipe").kind == "none"


def test_remember_and_recall(mos: MemOS, cube: str) -> None:
    out = mos.reader.intent(cube, "remember that I'm vegetarian", user="alice", speaker="Alice")
    assert out.intent == "remember" and out.decisions[0].op == "ADD"
    assert out.items[0].text == "Alice is vegetarian." and out.items[0].memory_type.value in (
        "preference", "persona", "fact")
    listing = mos.reader.intent(cube, "What do you know about me?", user="alice",
                                speaker="Alice")
    assert listing.intent == "recall" and [i.text for i in listing.items] == [
        "Alice is vegetarian."]


def test_forget_removes_from_search_and_records_who(mos: MemOS, cube: str) -> None:
    mos.add(cube, messages=[msg("My address is 12 Oak Street.", "2023-01-10T10:00:00Z")],
            user="alice", infer=True)
    mos.add(cube, messages=[msg("I went to the dentist yesterday.")], user="alice", infer=True)
    assert any("Oak" in h.item.text for h in mos.search("Oak Street address", cube))
    out = mos.add(cube, messages=[msg("Please forget my address.", "2023-05-09T10:00:00Z")],
                  user="alice", infer=True)
    [done] = out.result.intents
    assert done.intent == "forget" and {i.memory_type.value for i in done.items} == {
        "fact", "episode"}
    assert not any("Oak" in h.item.text for h in mos.search("Oak Street address", cube))
    assert any("dentist" in h.item.text for h in mos.search("dentist", cube))  # untouched
    for item in done.items:
        assert item.state == MemoryState.DELETED
        assert item.metadata["forgotten"]["by"] == "alice"
        assert item.metadata["forgotten"]["request"] == "Please forget my address."
        assert mos.history(item.id)[-1].op == "delete"
    assert mos.get(out[0].id).state == MemoryState.ACTIVE  # the command itself is kept


def test_forget_old_value_keeps_the_current_one(mos: MemOS, cube: str) -> None:
    mos.add(cube, messages=[msg("My address is 12 Oak Street.", "2023-01-10T10:00:00Z")],
            infer=True)
    mos.add(cube, messages=[msg("My address is now 5 Elm Road.", "2023-04-10T10:00:00Z")],
            infer=True)
    out = mos.reader.intent(cube, "forget my old address", user="alice", speaker="Alice")
    texts = {i.text for i in out.items}
    assert "Alice's address is 12 Oak Street." in texts
    assert not any("Elm" in t for t in texts)
    assert [i.text for i in derived(mos, cube)] == ["Alice's address is now 5 Elm Road."]


# --- documents and input limits --------------------------------------------------------------
DOC = """# Travel policy

Employees book flights through the portal. Always choose economy class for flights under
six hours.

## Expenses

Meals are reimbursed up to 40 euros a day. Receipts must be uploaded within 30 days.

""" + "\n\n".join(f"Paragraph {i} about hotel rules and the booking process." for i in range(30))


def test_document_chunked_into_memories_with_provenance(mos: MemOS, cube: str) -> None:
    out = mos.reader.add_document(cube, DOC, uri="file:///policy.md", title="Policy",
                                  max_chunk_chars=400, infer=True)
    assert len(out) > 3
    assert all(c.memory_type.value == "document" and len(c.text) <= 400 for c in out)
    assert all(c.source.document_uri == "file:///policy.md" for c in out)
    assert out[0].metadata["headings"] == ["Travel policy"]
    assert out[1].metadata["headings"] == ["Travel policy", "Expenses"]
    assert " ".join(c.text for c in out).split() == DOC.split()  # nothing lost
    rules = [mos.get(d.item_id) for d in out.result.decisions if d.memory_type == "rule"]
    assert rules and rules[0].derived_from == [out[0].id]
    assert rules[0].source.document_uri == "file:///policy.md"


def test_empty_input_is_a_validation_error(mos: MemOS, cube: str) -> None:
    with pytest.raises(ValidationError):
        mos.add(cube, messages=[msg("   ")], infer=True)
    with pytest.raises(ValidationError, match="no messages"):
        mos.add(cube, messages=[], infer=True)
    with pytest.raises(ValidationError):
        mos.reader.add_document(cube, " \n ", uri="x")
    assert mos.stats(cube)["cubes"][0]["items"] == 0


def test_one_megabyte_input(mos: MemOS, cube: str) -> None:
    big = ("All work and no play makes Jack a dull boy. " * 24_000)[:1_000_000]
    with pytest.raises(ValidationError, match="limit is 200000"):
        mos.add(cube, messages=[msg(big)], infer=True)
    assert mos.stats(cube)["cubes"][0]["items"] == 0  # refused whole, nothing half-stored
    chunks = mos.reader.add_document(cube, big, uri="mem://big.txt", max_chunk_chars=50_000)
    assert 20 <= len(chunks) <= 22 and all(len(c.text) <= 50_000 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == big.split()


def test_non_utf8_is_a_clear_error(mos: MemOS, cube: str) -> None:
    with pytest.raises(ValidationError, match="not valid utf-8: byte 0xff at offset 5"):
        mos.reader.add_document(cube, b"caf\xc3\xa9\xff\xfe", uri="x.txt")
    with pytest.raises(ValidationError, match="not valid Unicode"):
        mos.reader.add_document(cube, "caf\udcff", uri="x.txt")
    with pytest.raises(ValidationError, match="content"):
        mos.add(cube, messages=[{"role": "user", "content": b"\xff\xfe"}], infer=True)
    assert mos.stats(cube)["cubes"][0]["items"] == 0
    assert chunk_document("caf\u00e9 ok")[0].text == "café ok"


# --- malformed model output ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "lines"])
def test_malformed_llm_output_keeps_episodes(mos: MemOS, cube: str, fmt: str) -> None:
    garbage = GarbageLLM()
    mos.reader = MemReader(mos, extractor="llm", llm=garbage, llm_format=fmt)
    out = mos.add(cube, messages=[msg("I adopted a beagle named Rex."), msg("I love jazz.")],
                  infer=True)
    assert garbage.calls == 2 and out.result.decisions == []
    assert len(out.result.errors) == 2 and all("unusable model output" in e
                                                for e in out.result.errors)
    for ep in out:
        kept = mos.get(ep.id)
        assert kept.state == MemoryState.ACTIVE
        assert "unusable model output" in kept.metadata["reader"]["errors"][0]
    assert derived(mos, cube) == []
    assert [h.item.id for h in mos.search("beagle Rex", cube, 1)] == [out[0].id]


def test_model_down_logged_on_job_and_rules_still_work(mos: MemOS, cube: str) -> None:
    mos.reader = MemReader(mos, extractor="llm", llm=FailingLLM())
    out = mos.add(cube, messages=[msg("I love jazz.")], infer=True, wait=False)
    job = mos.reader.process_next_job()
    assert job is not None and job.id == out.job.id and job.state == "done"
    assert "model call failed" in job.result["errors"][0]
    assert mos.get(out[0].id).state == MemoryState.ACTIVE


# --- jobs ------------------------------------------------------------------------------------
def test_async_job_enqueue_process_status(mos: MemOS, cube: str) -> None:
    out = mos.add(cube, messages=[msg("I love jazz."), msg("I'm a nurse in Leeds.")],
                  infer=True, wait=False)
    assert out.result is None and mos.job(out.job.id).state == "queued"
    assert mos.search("jazz", cube, 1)[0].item.id == out[0].id  # searchable at once
    assert derived(mos, cube) == []
    import threading

    stop = threading.Event()
    worker = threading.Thread(target=mos.reader.run_worker, args=(stop,),
                              kwargs={"poll_interval": 0.05})
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while mos.job(out.job.id).state != "done" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(10)
    job = mos.job(out.job.id)
    assert job.state == "done" and job.result["ops"] == {"ADD": 2}
    assert sorted(i.text for i in derived(mos, cube)) == ["Alice is a nurse in Leeds.",
                                                        "Alice loves jazz."]


def test_job_reclaimed_after_crash_does_not_duplicate(mos: MemOS, cube: str) -> None:
    texts = ["I adopted a beagle named Rex.", "I love jazz music.", "I work as a nurse."]
    out = mos.add(cube, messages=[msg(t, f"2023-05-0{i + 1}T10:00:00Z")
                                  for i, t in enumerate(texts)], infer=True, wait=False)
    mos.reader = MemReader(mos, extractor="llm", llm=EchoLLM(crash_after=2),
                           llm_format="lines", decider="rules")
    with pytest.raises(KeyboardInterrupt):  # the worker dies on the third episode
        mos.reader.process_next_job(lease_seconds=4.0)
    crashed_at = time.monotonic()
    mos.reader = MemReader(mos, extractor="llm", llm=EchoLLM(), llm_format="lines",
                           decider="rules")
    assert mos.job(out.job.id).state == "running"
    assert len(derived(mos, cube)) == 2
    assert mos.reader.process_next_job() is None  # still leased: not claimable yet
    time.sleep(max(0.0, 4.1 - (time.monotonic() - crashed_at)))
    job = mos.reader.process_next_job()
    assert job is not None and job.id == out.job.id and job.state == "done"
    assert job.attempts == 2 and job.result["skipped"] == 2
    assert sorted(i.text for i in derived(mos, cube)) == sorted(
        t.replace("I ", "Alice ").replace("work ", "works ").replace("love ", "loves ")
        for t in texts)
    # a crash after the memories were written but before the episode was marked
    for ep in out:
        meta = dict(mos.get(ep.id).metadata)
        meta.pop("reader")
        mos.update(ep.id, metadata=meta)
    again = mos.reader.process(cube, [e.id for e in out])
    assert {d.op for d in again.decisions} == {"NOOP"}
    assert len(derived(mos, cube)) == 3


# --- the local model -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def local_llm() -> Any:
    from memosys.models.llm import make_llm

    return make_llm("local")


def test_local_llm_extraction_is_validated(mos: MemOS, cube: str, local_llm: Any) -> None:
    """The 135M model is weak; whatever it says must come out typed, grounded and with a
    resolved date, or as a logged error — and the episodes stay."""
    mos.reader = MemReader(mos, extractor="llm", llm=local_llm)
    out = mos.add(cube, messages=[msg("I went to the support group yesterday."),
                                  msg("Hey, how are you?")], infer=True)
    assert mos.reader.extractor.backend.endswith(":lines")
    for d in out.result.decisions:
        item = mos.get(d.item_id)
        assert item.memory_type.value in ("fact", "preference", "event", "rule", "persona")
        assert item.derived_from and item.derived_from[0] in {e.id for e in out}
        if item.memory_type.value == "event":
            assert item.valid_from == at("2023-05-07")
    assert all(isinstance(e, str) for e in out.result.errors)
    assert all(mos.get(e.id).state == MemoryState.ACTIVE for e in out)


def test_llm_json_format_parses_a_capable_answer() -> None:
    answer = json.dumps({"memories": [
        {"type": "event", "text": "Caroline went to a support group yesterday",
         "time": "yesterday"},
        {"type": "Preferences", "text": "Caroline loves painting", "time": ""},
        {"type": "persona", "text": "Caroline is an astronaut on Mars", "time": ""},
    ]})
    ex = LLMExtractor(JudgeLLM(answer))
    assert ex.fmt == "json"
    out = ex.extract([Turn("I went to a support group yesterday and I love painting.",
                           "Caroline", timestamp=at("2023-05-08"))])
    got = [(c.memory_type.value, c.text, c.valid_from) for c in out.candidates]
    assert got == [
        ("event", "Caroline went to a support group on 7 May 2023.", at("2023-05-07")),
        ("preference", "Caroline loves painting.", at("2023-05-08")),
    ]
    assert "not grounded" in out.errors[0]  # the invented astronaut is dropped


def test_cli_infer_queue_worker_and_job_status(home: Path, embedder: Any,
                                               tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from memosys.interface.cli import app

    def cli(*args: str) -> Any:
        res = CliRunner().invoke(app, [*args, "--home", str(home)])
        assert res.exit_code == 0, res.output + str(res.exception or "")
        return json.loads(res.stdout) if "--json" in args else res

    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([msg("I went hiking yesterday.", mid="m1")]))
    now = cli("add", "--messages", str(chat), "-c", "a", "--user", "alice", "--infer", "--json")
    assert now["extraction"]["ops"] == {"ADD": 1} and now["job"] is None
    queued = cli("add", "--messages", str(chat), "-c", "b", "--infer", "--no-wait", "--json")
    job_id = queued["job"]["id"]
    assert cli("job", job_id, "--json")["state"] == "queued"
    assert "processed 1 jobs" in cli("worker", "--once", "--extractor", "rules").output
    done = cli("job", job_id, "--json")
    assert done["state"] == "done" and done["result"]["ops"] == {"ADD": 1}


def test_cli_bench_reader_writes_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from memosys.interface.cli import app

    target = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "reader", "--extractor", "rules", "--json",
                                   str(target), "--home", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    data = json.loads(target.read_text())
    assert data["backend"] == "rules" and data["messages"] >= 40
    assert 0 <= data["precision"] <= 1 and 0 <= data["recall"] <= 1
