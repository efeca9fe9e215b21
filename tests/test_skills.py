"""Tool and skill memory: recording tool calls and trajectories, distilling skills from
repeated successful trajectories, finding them for a new task, and the scheduler's use of
them (docs/skills.md)."""

from __future__ import annotations

from typing import Any

import pytest

from memosys.errors import NotFoundError, PermissionDeniedError, ValidationError
from memosys.operation.scheduler import MemScheduler, SchedulerConfig
from memosys.system import MemOS

SIMILAR = [
    ("Deploy the web app to staging", "web"),
    ("Deploy the billing service to the staging environment", "billing"),
    ("Ship the search API to staging", "search"),
]
FOURTH = "Deploy the notifications service to staging"
UNRELATED = "What is the capital of France?"


def _steps(service: str) -> list[dict[str, Any]]:
    return [
        {"tool": "git_pull", "arguments": {"repo": service}, "result": "up to date"},
        {"tool": "run_tests", "arguments": {"suite": "unit"}, "result": "142 passed",
         "duration_ms": 5300},
        {"tool": "deploy", "arguments": {"service": service, "env": "staging"},
         "result": "deployed"},
    ]


@pytest.fixture
def agent(mos: MemOS) -> MemOS:
    mos.scheduler = MemScheduler(mos, SchedulerConfig(background=False))
    mos.create_cube("agent")
    return mos


def _three(mos: MemOS, cube: str = "agent", **kw: Any) -> list[str]:
    return [mos.record_trajectory(cube, task, _steps(svc), True, **kw).id
            for task, svc in SIMILAR]


def test_skill_from_three_trajectories_found_for_a_fourth_not_for_unrelated(
        agent: MemOS) -> None:
    """The acceptance test: three similar successful runs become one skill; a fourth
    similar task finds it, an unrelated one finds nothing."""
    sources = _three(agent)
    agent.record_trajectory("agent", "Write a haiku about autumn leaves",
                            [{"tool": "write_text", "arguments": {"form": "haiku"}}], True)
    report = agent.distil_skills("agent")
    assert report.successful == 4 and len(report.created) == 1
    [skill] = agent.skills.list("agent")
    assert skill.memory_type.value == "skill" and sorted(skill.derived_from) == sorted(sources)
    payload = skill.metadata["skill"]
    assert [s["tool"] for s in payload["steps"]] == ["git_pull", "run_tests", "deploy"]
    assert payload["steps"][1]["arguments"] == {"suite": "unit"}  # all runs agreed
    assert set(payload["steps"][2]["varying"]["service"]) == {"web", "billing", "search"}
    assert payload["steps"][2]["arguments"] == {"env": "staging"}
    assert "deploy" in payload["name"] and payload["support"] == 3

    [match] = agent.find_skills("agent", FOURTH)
    assert match.item.id == skill.id and match.score >= 0.45
    assert agent.find_skills("agent", UNRELATED) == []
    assert agent.find_skills("agent", "Write a poem about the sea") == []  # support 1


def test_two_are_not_enough_and_rerun_is_idempotent(agent: MemOS) -> None:
    first = [agent.record_trajectory("agent", t, _steps(s), True) for t, s in SIMILAR[:2]]
    assert agent.distil_skills("agent").created == []
    assert agent.find_skills("agent", FOURTH) == []
    agent.record_trajectory("agent", *SIMILAR[2][:1], _steps(SIMILAR[2][1]), True)
    created = agent.distil_skills("agent").created
    again = agent.distil_skills("agent")
    assert again.created == again.updated == [] and again.unchanged == created
    assert agent.get(created[0]).version == 1

    # a failed run of the same kind joins as a pitfall: a new version of the same skill
    agent.record_trajectory("agent", "Deploy the auth service to staging", [
        _steps("auth")[0],
        {"tool": "deploy", "arguments": {"service": "auth", "env": "staging"},
         "success": False, "error": "refused: tests were not run"}], False)
    updated = agent.distil_skills("agent")
    assert updated.updated == created
    skill = agent.get(created[0])
    assert skill.version == 2 and "refused: tests were not run" in skill.text
    messages = [p["message"] for p in skill.metadata["skill"]["pitfalls"]]
    assert "runs that skipped run_tests failed" in messages
    assert skill.metadata["skill"]["failures"] == 1

    # deleting a source drops the skill under its support: archived, restorable
    agent.delete(first[0].id)
    retired = agent.distil_skills("agent")
    assert retired.retired == created
    assert agent.get(created[0]).state.value == "archived"
    assert agent.find_skills("agent", FOURTH) == []


def test_trajectory_from_recorded_tool_calls(agent: MemOS) -> None:
    call = agent.record_tool_call("agent", "weather", {"city": "Oslo"}, "rain, 4°C",
                                  duration_ms=120, trajectory_id="run-1",
                                  task="plan a walk in Oslo")
    assert call.memory_type.value == "tool_call"
    assert call.tags == ["tool:weather", "trajectory:run-1"]
    assert call.metadata["arguments"] == {"city": "Oslo"} and call.metadata["success"]
    agent.record_tool_call("agent", "maps.route", {"to": "Frogner park"}, {"km": 3.2},
                           success=False, error="timeout", trajectory_id="run-1")
    traj = agent.record_trajectory("agent", "plan a walk in Oslo", trajectory_id="run-1",
                                   success=False, outcome="gave up")
    assert traj.memory_type.value == "trajectory" and traj.derived_from[0] == call.id
    steps = traj.metadata["trajectory"]["steps"]
    assert [s["tool"] for s in steps] == ["weather", "maps.route"]
    assert steps[1]["result"] == '{"km": 3.2}' and not steps[1]["success"]
    hits = agent.search("what did the weather tool say", "agent",
                        filters={"memory_types": ["tool_call"]})
    assert hits[0].item.id == call.id


@pytest.mark.parametrize(("call", "needle"), [
    ({"tool": "has space"}, "tool"),
    ({"tool": "t", "success": "yes"}, "success"),
    ({"tool": "t", "duration_ms": -1}, "duration_ms"),
    ({"tool": "t", "arguments": "city=Oslo"}, "arguments"),
    ({"tool": "t", "result": "x" * 20_001}, "result"),
    ({"tool": "t", "trajectory_id": "no spaces allowed"}, "trajectory_id"),
])
def test_bad_tool_calls_are_typed_errors(agent: MemOS, call: dict[str, Any],
                                         needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        agent.record_tool_call("agent", **call)
    assert agent.stats("agent")["cubes"][0]["items"] == 0


def test_bad_trajectories_are_typed_errors(agent: MemOS) -> None:
    with pytest.raises(ValidationError, match="steps"):
        agent.record_trajectory("agent", "t", None, True)
    with pytest.raises(ValidationError, match="at least one step"):
        agent.record_trajectory("agent", "t", [], True)
    with pytest.raises(ValidationError, match="steps.0.tool"):
        agent.record_trajectory("agent", "t", [{"arguments": {}}], True)
    with pytest.raises(ValidationError, match="no tool calls"):
        agent.record_trajectory("agent", "t", trajectory_id="nothing-here")
    with pytest.raises(ValidationError, match="min_support"):
        agent.distil_skills("agent", min_support=1)
    with pytest.raises(ValidationError, match="task"):
        agent.find_skills("agent", " ")
    assert agent.stats("agent")["cubes"][0]["items"] == 0


def test_distil_job_runs_on_the_scheduler_worker(agent: MemOS) -> None:
    _three(agent)
    assert agent.skills.list("agent") == []  # nothing until the job runs
    assert agent.scheduler.run_pending() == 1  # one job for the burst, not three
    assert len(agent.skills.list("agent")) == 1


def test_dry_run_writes_nothing(agent: MemOS) -> None:
    _three(agent, distil=False)
    plan = agent.distil_skills("agent", dry_run=True)
    assert plan.created == [] and [s["action"] for s in plan.skills] == ["created"]
    assert agent.skills.list("agent") == []


def test_governance_permissions_privacy_and_audit(agent: MemOS) -> None:
    agent.create_user("alice", role="owner")
    agent.create_user("bob")
    agent.create_cube("ops", owner="alice")
    alice = agent.as_actor(agent.authenticate(agent.create_api_key("alice")[1]))
    bob = agent.as_actor(agent.authenticate(agent.create_api_key("bob")[1]))
    with pytest.raises(NotFoundError):
        bob.record_tool_call("ops", "weather")
    with pytest.raises(NotFoundError):
        bob.find_skills("ops", FOURTH)
    agent.share_cube("ops", "bob", ["read"])
    with pytest.raises(PermissionDeniedError):
        bob.record_trajectory("ops", FOURTH, _steps("x"), True)
    with pytest.raises(PermissionDeniedError):
        bob.distil_skills("ops")

    _three(alice, "ops", distil=False)
    [created] = alice.distil_skills("ops").created
    assert [m.item.id for m in bob.find_skills("ops", FOURTH)] == [created]
    assert agent.get(created).owner == "alice"
    ops = {e.op for e in agent.audit_log(actor="alice")}
    assert {"add", "skills.distil"} <= ops
    assert "skills.find" in {e.op for e in agent.audit_log(actor="bob")}

    # private trajectories feed only a private skill of their owner
    agent.create_cube("shared")
    agent.share_cube("shared", "bob", ["read", "write"])
    for task, svc in SIMILAR:
        bob.record_trajectory("shared", task, _steps(svc), True, distil=False,
                              visibility="private")
    [private] = agent.distil_skills("shared").created
    skill = agent.get(private)
    assert skill.visibility.value == "private" and skill.owner == "bob"
    assert [m.item.id for m in bob.find_skills("shared", FOURTH)] == [private]
