"""Consolidation runs: near-duplicates merged and rolled back as one unit, synthesised
profiles linked to their sources and regenerated when a source changes, contradictions
queued for review, permissions, the background job and schedule, CLI, REST and the bench."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from live_server import LiveServer
from memosys.config import Settings
from memosys.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from memosys.interface.cli import app
from memosys.interface.server import create_app
from memosys.operation.consolidate import QUEUED_JOB, queue_due
from memosys.operation.consolidate_plan import SYNTH_KEY, ConsolidationConfig
from memosys.system import MemOS
from memosys.types import MemoryItem, MemoryState
from test_locomo_bench import TINY

MISO = "Alice adopted a cat named Miso"
MISO_SPRING = "Alice adopted a cat named Miso last spring"
MISO_SHELTER = "Alice adopted a cat named Miso from the shelter"
REX = "Alice adopted a dog named Rex"


def _add(mos: MemOS, cube: str, text: str, **kw: object) -> MemoryItem:
    return mos.add(cube, text, **kw)[0]  # type: ignore[arg-type]


def _profiles(mos: MemOS, cube: str) -> list[MemoryItem]:
    return [i for i in mos.list(cube, limit=1000)
            if (i.metadata.get(SYNTH_KEY) or {}).get("kind") == "profile"]


@pytest.fixture
def cats(mos: MemOS) -> dict[str, MemoryItem]:
    mos.create_cube("c")
    return {name: _add(mos, "c", text, user="alice") for name, text in
            (("miso", MISO), ("spring", MISO_SPRING), ("shelter", MISO_SHELTER),
             ("rex", REX))}


def test_duplicates_merged_and_then_rolled_back_as_one_unit(
        mos: MemOS, cats: dict[str, MemoryItem]) -> None:
    dry = mos.consolidate("c", dry_run=True)
    [merge] = [a for a in dry.plan if a.kind == "merge"]
    # the shorter statement merges into the one that says the same and more; the one with
    # its own detail (the shelter) and the distinct fact (a dog) are not merged
    assert merge.item_ids == [cats["spring"].id, cats["miso"].id]
    assert "near-duplicate" in merge.reason
    assert dry.state == "planned" and dry.changes == []
    assert all(mos.get(i.id).version == 1 for i in cats.values())  # nothing changed
    assert mos.consolidation_run(dry.id).plan[0].kind == dry.plan[0].kind

    run = mos.consolidate("c")
    assert run.state == "done" and run.id != dry.id
    dup, survivor = mos.get(cats["miso"].id), mos.get(cats["spring"].id)
    assert dup.state == MemoryState.SUPERSEDED and dup.metadata["superseded_by"] == survivor.id
    assert dup.text == MISO  # no text lost: the duplicate is kept, only superseded
    assert [m["id"] for m in survivor.metadata["merged_from"]] == [dup.id]
    assert mos.get(cats["shelter"].id).state == MemoryState.ACTIVE
    assert mos.get(cats["rex"].id).state == MemoryState.ACTIVE
    hits = [h.item.id for h in mos.search("cat named Miso", "c", top_k=10)]
    assert survivor.id in hits and dup.id not in hits
    [profile] = _profiles(mos, "c")
    assert {c.op for c in run.changes} == {"survivor", "superseded", "synthesised"}

    undone = mos.rollback_consolidation(run.id)
    assert undone.state == "rolled_back"
    assert mos.get(dup.id).state == MemoryState.ACTIVE
    back = mos.get(survivor.id)
    assert "merged_from" not in back.metadata and back.version == survivor.version + 1
    assert mos.get(profile.id).state == MemoryState.DELETED
    assert _profiles(mos, "c") == []
    # one unit: every write of the rollback landed at the same cube clock
    clocks = {mos.vault.history(c.item_id)[-1].clock for c in run.changes}
    assert len(clocks) == 1
    assert mos.consolidation_run(run.id).state == "rolled_back"
    with pytest.raises(ConflictError):
        mos.rollback_consolidation(run.id)
    with pytest.raises(ValidationError):
        mos.rollback_consolidation(dry.id)
    # the run and its rollback are each one `consolidated` change event (webhooks, SSE)
    events = mos.events.list(cube="c", kinds="consolidated", limit=10).events
    assert [e.payload.get("run") for e in events] == [run.id, run.id]
    assert events[0].payload.get("merge") == 1 and events[1].payload.get("rolled_back")
    ops = [e.op for e in mos.audit_log(cube="c", limit=50)]
    assert "consolidate" in ops and "consolidate.rollback" in ops


def test_rollback_refuses_when_a_memory_changed_since(
        mos: MemOS, cats: dict[str, MemoryItem]) -> None:
    run = mos.consolidate("c")
    mos.update(cats["spring"].id, text=MISO_SPRING + " in Oslo")
    with pytest.raises(ConflictError, match="changed since"):
        mos.rollback_consolidation(run.id)
    assert mos.get(cats["miso"].id).state == MemoryState.SUPERSEDED  # nothing half-undone


def test_synthesised_profile_links_its_sources_and_is_updated_when_a_source_changes(
        mos: MemOS) -> None:
    mos.create_cube("p")
    facts = [_add(mos, "p", t, user="bob") for t in (
        "Bob works as a nurse at the city hospital",
        "Bob prefers tea over coffee in the morning",
        "Bob plays the cello in a community orchestra",
        "Bob has a sister named Ines")]
    _add(mos, "p", "Dana collects vintage maps", user="dana")  # one fact: no profile
    first = mos.consolidate("p")
    [profile] = _profiles(mos, "p")
    assert profile.source.user == "bob" and "profile" in profile.tags
    assert set(profile.derived_from) == {f.id for f in facts}
    assert profile.metadata[SYNTH_KEY]["sources"] == {f.id: 1 for f in facts}
    assert "cello" in profile.text and "Dana" not in profile.text
    assert [a.kind for a in first.plan].count("profile") == 1

    mos.update(facts[2].id, text="Bob plays the viola in a community orchestra")
    [(stale, why)] = mos.consolidation_stale("p")
    assert stale.id == profile.id and f"source {facts[2].id} changed (v1 -> v2)" in why
    second = mos.consolidate("p")
    [action] = [a for a in second.plan if a.kind == "profile"]
    assert action.target_id == profile.id and action.reason.startswith("regenerate")
    updated = mos.get(profile.id)
    assert updated.version == profile.version + 1  # the same memory, a new version
    assert "viola" in updated.text and "cello" not in updated.text
    assert updated.metadata[SYNTH_KEY]["sources"][facts[2].id] == 2

    mos.delete(facts[3].id)
    mos.consolidate("p")
    again = mos.get(profile.id)
    assert facts[3].id not in again.derived_from and "Ines" not in again.text
    assert mos.consolidation_stale("p") == []
    idle = mos.consolidate("p")  # nothing changed: nothing to do
    assert [a for a in idle.plan if a.kind == "profile"] == [] and idle.changes == []


@pytest.mark.parametrize("topics", [True, False], ids=["topic-index", "tags"])
def test_topic_summaries_group_memories_by_topic(home: Path, embedder, topics: bool) -> None:
    """One summary per topic: from the topic index (`MemOS.topics`), or without it from
    memories sharing a tag."""
    with MemOS(Settings.load(home, topics=topics), embedder=embedder) as mos:
        mos.create_cube("t")
        trip = [_add(mos, "t", t, tags=["travel"]) for t in (
            "The flight to Lisbon leaves at 7am", "We booked a hotel near the river in Lisbon",
            "The Lisbon museum pass covers three days")]
        _add(mos, "t", "The quarterly report is due Friday", tags=["work"])
        mos.consolidate("t")
        summaries = [i for i in mos.list("t", limit=100)
                     if (i.metadata.get(SYNTH_KEY) or {}).get("kind") == "topic"]
        assert len(summaries) == 1
        [summary] = summaries
        assert set(summary.derived_from) == {t.id for t in trip} and "summary" in summary.tags
        assert "Lisbon" in summary.text and "quarterly" not in summary.text
        key = summary.metadata[SYNTH_KEY]["key"]
        if topics:
            assert key.removeprefix("topic:") in {t.id for t in mos.topics(summary.cube_id)}
        else:
            assert key == "topic:travel"


def test_contradictions_go_to_the_review_queue(mos: MemOS) -> None:
    mos.create_cube("r")
    old = _add(mos, "r", "Carol lives in Boston")
    new = _add(mos, "r", "Carol lives in Denver")
    run = mos.consolidate("r")
    [entry] = mos.lifecycle.review_queue("r")
    assert entry.kind == "contradiction" and entry.item_id == new.id
    assert entry.related_ids == (old.id,) and run.id in entry.reason
    assert mos.get(old.id).state == mos.get(new.id).state == MemoryState.ACTIVE  # unsettled
    assert run.reviews == [entry.id]
    assert mos.consolidate("r").reviews == []  # queued once
    mos.rollback_consolidation(run.id)
    assert mos.lifecycle.review_queue("r") == []  # withdrawn with the run


def test_only_a_writer_may_consolidate(mos: MemOS) -> None:
    mos.create_user("alice", role="owner")
    mos.create_user("bob", role="member")
    _, ka = mos.create_api_key("alice")
    _, kb = mos.create_api_key("bob")
    alice, bob = mos.as_actor(mos.authenticate(ka)), mos.as_actor(mos.authenticate(kb))
    alice.create_cube("shared")
    for text in (MISO, MISO_SPRING):
        alice.add("shared", text)
    mos.share_cube("shared", "bob", ["read"])
    with pytest.raises(PermissionDeniedError):
        bob.consolidate("shared")
    run = alice.consolidate("shared")
    with pytest.raises(PermissionDeniedError):
        bob.rollback_consolidation(run.id)
    mos.share_cube("shared", "bob", ["read", "write"])
    private = bob.add("shared", MISO, visibility="private")[0]
    assert bob.rollback_consolidation(run.id).state == "rolled_back"
    mine = alice.consolidate("shared")  # bob's private duplicate is not alice's to merge
    assert private.id not in {i for a in mine.plan for i in a.item_ids}
    assert mos.get(private.id).state == MemoryState.ACTIVE
    with pytest.raises(NotFoundError):
        mos.consolidation_run("no-such-run")


def test_bad_settings_are_typed_errors(mos: MemOS) -> None:
    mos.create_cube("c")
    with pytest.raises(ValidationError, match="merge_cosine"):
        mos.consolidate("c", config={"merge_cosine": 1.5})
    with pytest.raises(ValidationError, match="unknown"):
        mos.consolidate("c", config={"threshold": 0.9})
    with pytest.raises(ValidationError):
        ConsolidationConfig(synthesis="magic")
    with pytest.raises(ValidationError):
        Settings.load(mos.settings.home, consolidate_every_s="often")


def test_background_run_on_the_scheduler_worker(
        mos: MemOS, cats: dict[str, MemoryItem]) -> None:
    queued = mos.consolidate("c", wait=False)
    assert queued.state == "queued"
    deadline = time.monotonic() + 60
    while mos.consolidation_run(queued.id).state in ("queued", "running"):
        assert time.monotonic() < deadline, "the worker never ran the consolidation"
        time.sleep(0.1)
    run = mos.consolidation_run(queued.id)
    assert run.state == "done" and mos.get(cats["miso"].id).state == MemoryState.SUPERSEDED
    assert mos.rollback_consolidation(run.id).state == "rolled_back"


def test_schedule_queues_changed_cubes_once_per_period(home: Path, embedder) -> None:
    with MemOS(Settings.load(home, consolidate_every_s=3600), embedder=embedder) as mos:
        mos.create_cube("s")
        mos.add("s", MISO)
        last: dict[str, tuple[float, int, str]] = {}
        [job_id] = queue_due(mos, last, now=1000.0)
        assert mos.vault.get_job(job_id).kind == QUEUED_JOB
        assert queue_due(mos, last, now=5000.0) == []  # not run yet
        assert mos.scheduler.run_pending(kinds=[QUEUED_JOB]) == 1
        assert mos.consolidation_run(job_id).state == "done"
        assert queue_due(mos, last, now=1001.0) == []  # within the period
        assert queue_due(mos, last, now=5000.0) == []  # the cube has not changed
        mos.add("s", MISO_SPRING)
        assert len(queue_due(mos, last, now=9000.0)) == 1


def test_cli_dry_run_run_and_rollback(home: Path, embedder) -> None:
    with MemOS(Settings.load(home), embedder=embedder) as mos:
        mos.create_cube("c")
        for text in (MISO, MISO_SPRING):
            mos.add("c", text)
    runner = CliRunner()

    def cli(*args: str) -> dict:
        result = runner.invoke(app, [*args, "--home", str(home), "--json"])
        assert result.exit_code == 0, result.output + str(result.exception or "")
        return json.loads(result.output)

    dry = cli("consolidate", "c", "--dry-run")
    assert dry["dry_run"] and dry["counts"]["merge"] == 1 and dry["changes"] == []
    done = cli("consolidate", "c")
    assert done["state"] == "done" and done["counts"]["superseded"] == 1
    assert cli("consolidate", "show", done["id"])["id"] == done["id"]
    assert cli("consolidate", "rollback", done["id"])["state"] == "rolled_back"
    table = runner.invoke(app, ["consolidate", "c", "--dry-run", "--home", str(home)])
    assert table.exit_code == 0 and "merge" in table.output
    bad = runner.invoke(app, ["consolidate", "rollback", "--home", str(home)])
    assert bad.exit_code != 0 and "needs a run id" in bad.output


def test_rest_consolidate_read_and_rollback(mos: MemOS) -> None:
    mos.create_cube("c")
    for text in (MISO, MISO_SPRING):
        mos.add("c", text)
    with LiveServer(create_app(mos)) as url, httpx.Client(base_url=url, timeout=60) as http:
        dry = http.post("/api/v1/cubes/c/consolidate", json={"dry_run": True})
        assert dry.status_code == 200, dry.text
        assert dry.json()["run"]["counts"]["merge"] == 1
        run = http.post("/api/v1/cubes/c/consolidate").json()["run"]
        assert run["state"] == "done"
        assert http.get(f"/api/v1/consolidations/{run['id']}").json()["run"]["id"] == run["id"]
        back = http.post(f"/api/v1/consolidations/{run['id']}/rollback")
        assert back.json()["run"]["state"] == "rolled_back"
        again = http.post(f"/api/v1/consolidations/{run['id']}/rollback")
        assert again.status_code == 409
        bad = http.post("/api/v1/cubes/c/consolidate", json={"config": {"merge_cosine": 7}})
        assert bad.status_code == 422 or bad.status_code == 400


def test_bench_writes_the_json_shape(tmp_path: Path, embedder) -> None:
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps(TINY))
    out = tmp_path / "consolidate.json"
    result = CliRunner().invoke(app, ["bench", "consolidate", "--data", str(data),
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output + str(result.exception or "")
    report = json.loads(out.read_text())
    assert set(report["before"]) == set(report["after"]) == {"memories", "recall@10"}
    assert isinstance(report["seconds"], float)
    assert report["after"]["recall@10"] >= report["before"]["recall@10"]


def test_profile_written_by_the_local_model(mos: MemOS, local) -> None:
    """synthesis="llm": the bound model (the session's SmolLM2) writes the profile from the
    most central statements; provenance is the same as without a model."""
    from memosys.operation.consolidate_synth import Group, extractive_text

    mos.llm = local
    mos.create_cube("m")
    facts = [_add(mos, "m", t, user="bob") for t in (
        "Bob works as a nurse at the city hospital",
        "Bob prefers tea over coffee in the morning",
        "Bob plays the cello in a community orchestra")]
    cfg = ConsolidationConfig(synthesis="llm")
    mos.consolidate("m", config=cfg)
    [profile] = _profiles(mos, "m")
    assert profile.metadata[SYNTH_KEY]["method"] == "llm"
    assert set(profile.derived_from) == {f.id for f in facts}
    assert profile.text.startswith("Profile of bob (from 3 memories).")
    plain = extractive_text(Group("profile", "profile:bob", "bob", ()), facts, cfg)
    assert profile.text != plain and len(profile.text) > len("Profile of bob (from 3 memories).")


def test_the_worker_process_runs_queued_consolidations(home: Path, embedder) -> None:
    """`memosys worker` (a process of its own) runs every kind of queued job, a
    consolidation included, not only extractions."""
    from dataclasses import replace

    with MemOS(Settings.load(home), embedder=embedder) as mos:
        mos.scheduler.config = replace(mos.scheduler.config, background=False)
        mos.create_cube("w")
        miso = _add(mos, "w", MISO, user="alice")
        _add(mos, "w", MISO_SPRING, user="alice")
        queued = mos.consolidate("w", wait=False)
        assert mos.consolidation_run(queued.id).state == "queued"
    res = CliRunner().invoke(app, ["worker", "--once", "--extractor", "rules",
                                   "--home", str(home)])
    assert res.exit_code == 0, res.output
    assert "processed 1 jobs" in res.output
    with MemOS(Settings.load(home), embedder=embedder) as mos:
        assert mos.consolidation_run(queued.id).state == "done"
        assert mos.get(miso.id).state == MemoryState.SUPERSEDED
