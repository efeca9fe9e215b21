"""MemScheduler: forms and reasons, promotion after repeated unchanged use, demotion on change
and cooling, background builds that the request path never waits for (real model, real vault)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memosys.models.local_llm import LocalLLM
from memosys.operation.prompt import DEFAULT_SYSTEM
from memosys.operation.scheduler import BUILD_JOB, MemScheduler, Plan, SchedulerConfig
from memosys.system import MemOS

WIFI = "The wifi password at the cottage is tulip-42."
QUESTION = "What is the wifi password at the cottage?"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def smos(mos: MemOS, local: LocalLLM, clock: Clock) -> Iterator[MemOS]:
    mos.llm = local
    mos.scheduler = MemScheduler(mos, SchedulerConfig(
        background=False, promote_after=3, heat_half_life_s=600.0, cool_below=0.5,
        clock=clock))
    mos.create_cube("c")
    mos.add("c", "Keep answers short.", memory_type="rule")
    mos.add("c", WIFI)
    mos.add("c", "The user's dentist appointment is on Thursday.")
    yield mos


def _plan(mos: MemOS, local: LocalLLM, query: str = QUESTION) -> Plan:
    tok = local.tokenizer
    return mos.scheduler.plan(
        mos, query, [mos.get_cube("c").id], base_system=DEFAULT_SYSTEM, model=local.id,
        count_tokens=lambda t: len(tok(t, add_special_tokens=False)["input_ids"]),
        local_llm=local)


def _answer(mos: MemOS, local: LocalLLM, query: str = QUESTION) -> Plan:
    """One call as chat makes it, without generating (the answer is not what is tested)."""
    plan = _plan(mos, local, query)
    mos.scheduler.after_answer(plan)
    return plan


def _decision(plan: Plan, text: str, mos: MemOS) -> tuple[str, str, str]:
    for d in plan.record.decisions:
        if mos.get(d.memory_id).text == text:
            return d.form, d.section, d.reason
    raise AssertionError(f"no decision for {text!r}")


def test_forms_and_reasons_are_visible(smos: MemOS, local: LocalLLM) -> None:
    plan = _answer(smos, local)
    assert _decision(plan, "Keep answers short.", smos)[:2] == ("plaintext", "rules")
    assert "pinned rule" in _decision(plan, "Keep answers short.", smos)[2]
    assert "build queued" in _decision(plan, "Keep answers short.", smos)[2]
    form, section, reason = _decision(plan, WIFI, smos)
    assert (form, section) == ("plaintext", "retrieved") and "rank 1" in reason
    # Unrelated to the query: left out, with the reason.
    form, _, reason = _decision(plan, "The user's dentist appointment is on Thursday.", smos)
    assert form == "skipped" and "not relevant" in reason
    wifi = smos.get(plan.retrieved[0].id)
    assert wifi.stats.used_in_answer_count == 1
    records = smos.scheduler.recent_decisions(limit=1)
    assert len(records) == 1 and records[0].id == plan.record.id
    assert records[0].as_dict()["decisions"][0]["reason"]


def test_request_never_waits_for_a_build(smos: MemOS, local: LocalLLM) -> None:
    first = _answer(smos, local)
    assert first.activation is None  # nothing built yet: the text goes in the prompt
    job_id = next(e.split("job ")[1].rstrip(")") for e in first.record.events if "queued" in e)
    assert smos.job(job_id).state == "queued" and smos.job(job_id).kind == BUILD_JOB
    again = _answer(smos, local)  # the same build is not queued twice
    assert not any("queued" in e for e in again.record.events) or job_id in " ".join(
        again.record.events)
    assert smos.scheduler.run_pending() == 1
    assert smos.job(job_id).state == "done"
    served = _answer(smos, local)
    assert served.activation is not None and served.record.activation is not None
    assert _decision(served, "Keep answers short.", smos)[0] == "activation"


def test_promoted_after_repeated_use_and_demoted_after_change(
    smos: MemOS, local: LocalLLM, clock: Clock
) -> None:
    for _ in range(2):
        plan = _answer(smos, local)
        assert _decision(plan, WIFI, smos)[1] == "retrieved"
        clock.now += 30
    third = _answer(smos, local)
    assert any(e.startswith("promoted") and "3 answers" in e for e in third.record.events)
    wifi_id = third.retrieved[0].id
    assert smos.scheduler.promoted() == {wifi_id: 1}

    # Now part of the stable set: in the background section, cache queued, then served.
    fourth = _answer(smos, local)
    assert _decision(fourth, WIFI, smos)[:2] == ("plaintext", "background")
    assert "promoted" in _decision(fourth, WIFI, smos)[2]
    smos.scheduler.run_pending()
    fifth = _answer(smos, local)
    assert _decision(fifth, WIFI, smos)[:2] == ("activation", "background")
    assert fifth.activation is not None and WIFI in fifth.stable_text

    # Edited: demoted at once, back to retrieved plaintext; the old cache is never used.
    smos.update(wifi_id, text="The wifi password at the cottage is lotus-77.")
    sixth = _answer(smos, local)
    assert any(e.startswith(f"demoted {wifi_id}: changed (v1 -> v2)")
               for e in sixth.record.events)
    assert smos.scheduler.promoted() == {}
    form, section, _ = _decision(sixth, "The wifi password at the cottage is lotus-77.", smos)
    assert (form, section) == ("plaintext", "retrieved")
    assert sixth.activation is None or "lotus" not in sixth.stable_text


def test_demoted_when_it_cools(smos: MemOS, local: LocalLLM, clock: Clock) -> None:
    for _ in range(3):
        _answer(smos, local)
    assert len(smos.scheduler.promoted()) == 1
    # Still relevant a little later: stays promoted (re-heated by the search).
    clock.now += 300
    assert _decision(_answer(smos, local), WIFI, smos)[1] == "background"
    # Then only unrelated questions for a long time: its heat decays away.
    clock.now += 600 * 6
    plan = _answer(smos, local, "When is my dentist appointment?")
    assert any("cooled" in e for e in plan.record.events)
    assert smos.scheduler.promoted() == {}
    assert all(d.section != "background" for d in plan.record.decisions)
