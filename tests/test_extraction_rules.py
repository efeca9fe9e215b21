"""Per-cube extraction rules: a "never remember" rule stops the write on every path and the
audit log names the rule (never the text); MemReader drops only what a rule refuses and
tags what it keeps with the cube's categories, without a model; the config is versioned,
audited and stored in both backends; REST, CLI and MCP reach the same rules."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from typer.testing import CliRunner

from conftest import BACKENDS
from live_server import LiveServer
from memosys.client import Client as MemosysClient
from memosys.config import Settings
from memosys.errors import (
    ConflictError,
    PermissionDeniedError,
    RefusedByRuleError,
    ValidationError,
)
from memosys.infra.exchange import export_cube, import_archive
from memosys.interface.cli import app
from memosys.interface.extract import Turn
from memosys.interface.llm_extract import LLMExtractor
from memosys.interface.mcp import build_mcp_server
from memosys.interface.reader_rules import ExtractionConfig, text_hash
from memosys.interface.server import create_app
from memosys.system import MemOS, SearchFilters
from memosys.system_extraction import guided, load
from memosys.types import MemoryItem

SECRET = "Maya was diagnosed with diabetes last year"
HEALTH_RULE = {"id": "no-health", "name": "never store health data",
               "keywords": ["diabetes", "blood pressure", "diagnosed"]}
CATEGORIES = [
    {"name": "health", "description": "medical conditions, illnesses, symptoms, "
     "medication, doctors and hospitals"},
    {"name": "food", "description": "food, cooking, restaurants and what the user likes "
     "to eat"},
    {"name": "work", "description": "the user's job, employer, colleagues, projects and "
     "career", "keywords": ["deadline"]},
]


@pytest.fixture(params=sorted(BACKENDS))
def mos(request: pytest.FixtureRequest, home: Path, tmp_path: Path, embedder):
    runtime = MemOS(Settings.load(home), vault=BACKENDS[request.param](tmp_path),
                    embedder=embedder)
    yield runtime
    runtime.close()


@pytest.fixture
def sqlite_mos(home: Path, embedder):
    runtime = MemOS(Settings.load(home), embedder=embedder)
    yield runtime
    runtime.close()


def _everything(mos: MemOS, cube: str) -> list[MemoryItem]:
    """Every version of every memory of the cube, whatever its state."""
    items = mos._all_items(mos.get_cube(cube).id)
    return [r.item for i in items for r in mos.vault.history(i.id)]


def _refusals(mos: MemOS, cube: str) -> list[Any]:
    return [e for e in mos.audit_log(cube=cube, limit=1000) if e.op == "extraction.refused"]


def _no_secret_anywhere(mos: MemOS, cube: str, words: tuple[str, ...]) -> None:
    for item in _everything(mos, cube):
        assert not any(w in item.text.lower() for w in words), item.text
        assert not any(w in json.dumps(item.metadata).lower() for w in words)
    for entry in mos.audit_log(limit=5000):
        assert not any(w in json.dumps(entry.as_dict()).lower() for w in words)


# --- the acceptance test: a rule stops the write and the audit says which rule --------------
def test_never_remember_rule_refuses_direct_writes_and_audit_names_it(mos: MemOS) -> None:
    mos.create_cube("notes")
    [kept] = mos.add("notes", "Maya likes green tea")
    mos.set_extraction_rules("notes", rules=[HEALTH_RULE])
    with pytest.raises(RefusedByRuleError) as refused:
        mos.add("notes", SECRET)
    assert refused.value.rule_id == "no-health"
    assert refused.value.code == "refused_by_rule"
    with pytest.raises(RefusedByRuleError):  # a batch is refused whole: nothing written
        mos.add_items("notes", [MemoryItem(cube_id="x", text="Maya runs on Sundays"),
                                MemoryItem(cube_id="x", text="Her blood pressure is 150/95")])
    with pytest.raises(RefusedByRuleError):  # an edit cannot bring it in either
        mos.update(kept.id, text="Maya likes green tea for her diabetes")
    assert [i.text for i in _everything(mos, "notes")] == ["Maya likes green tea"]
    assert mos.get(kept.id).version == 1  # nothing already stored is lost or changed

    entries = _refusals(mos, "notes")
    assert len(entries) == 3
    assert {e.outcome for e in entries} == {"denied"}
    first = entries[-1]  # newest first
    assert first.detail["rule_id"] == "no-health"
    assert first.detail["rule_name"] == "never store health data"
    assert first.detail["action"] == "refused"
    assert first.detail["sha256"] == text_hash(SECRET)  # provable, not readable
    _no_secret_anywhere(mos, "notes", ("diabetes", "blood pressure"))
    assert mos.verify_audit().ok


def test_existing_memories_are_not_touched_by_a_new_rule(sqlite_mos: MemOS) -> None:
    mos = sqlite_mos
    mos.create_cube("c")
    [old] = mos.add("c", "Ben's blood pressure medication is at 8am")
    mos.set_extraction_rules("c", rules=[HEALTH_RULE])
    assert mos.get(old.id).text == old.text
    mos.update(old.id, tags=["reviewed"])  # metadata changes still work
    mos.delete(old.id)  # ... and so does forgetting it
    assert mos.rollback(old.id, 1).text == old.text  # its own text comes back unchanged


def test_pii_label_and_regex_rules(sqlite_mos: MemOS) -> None:
    mos = sqlite_mos
    mos.create_cube("c")
    mos.set_cube_policy("c", pii="store")
    mos.set_extraction_rules("c", rules=[
        {"name": "no phone numbers", "pii": ["phone"]},
        {"name": "no passport numbers", "patterns": [r"\bpassport\s+(no\.?|number)\s*\w+"]}])
    with pytest.raises(RefusedByRuleError) as phone:
        mos.add("c", "Call Ana on +44 20 7946 0958 after six")
    assert phone.value.rule_id == "no-phone-numbers"
    with pytest.raises(RefusedByRuleError) as passport:
        mos.add("c", "His passport number X1234567 expires soon")
    assert passport.value.rule_id == "no-passport-numbers"
    assert mos.add("c", "Ana prefers calls after six")  # unrelated text is stored
    assert mos.set_cube_policy("c", pii="mask")["pii"] == "mask"
    assert [r["id"] for r in mos.extraction_rules("c")["rules"]] == [
        "no-phone-numbers", "no-passport-numbers"]  # other policy fields keep the rules


def test_import_cannot_bring_refused_memories_in(sqlite_mos: MemOS, tmp_path: Path) -> None:
    mos = sqlite_mos
    mos.create_cube("src")
    mos.add("src", SECRET)
    mos.add("src", "Maya likes green tea")
    export_cube(mos, "src", tmp_path / "src.mip")
    mos.create_cube("dst")
    mos.set_extraction_rules("dst", rules=[HEALTH_RULE])
    with pytest.raises(RefusedByRuleError):
        import_archive(mos, tmp_path / "src.mip", name="dst", on_conflict="merge")
    assert _everything(mos, "dst") == []


def test_rules_travel_with_the_cube_archive(sqlite_mos: MemOS, tmp_path: Path) -> None:
    """A cube created by an import adopts the archive's rules (a copy must not start storing
    what its source never would); an existing cube keeps its own; a malformed rule set in
    the manifest refuses the import before anything is written."""
    from exchange_helpers import manifest_of, rewrite
    from memosys.errors import ArchiveError

    mos = sqlite_mos
    mos.create_cube("src")
    mos.set_extraction_rules("src", rules=[HEALTH_RULE], categories=CATEGORIES)
    mos.add("src", "Maya likes green tea")
    export_cube(mos, "src", tmp_path / "src.mip")
    carried = manifest_of(tmp_path / "src.mip")["extraction"]
    assert [r["id"] for r in carried["rules"]] == ["no-health"]
    assert "updated_by" not in carried
    report = import_archive(mos, tmp_path / "src.mip", name="copy")
    assert any("rules adopted" in m for m in report.messages)
    copied = mos.extraction_rules("copy")
    assert [r["id"] for r in copied["rules"]] == ["no-health"]
    assert [c["name"] for c in copied["categories"]] == [c["name"] for c in CATEGORIES]
    with pytest.raises(RefusedByRuleError):
        mos.add("copy", SECRET)
    mos.create_cube("dst")
    mos.set_extraction_rules("dst", rules=[{"id": "no-tea", "name": "no tea",
                                            "keywords": ["oolong"]}])
    report = import_archive(mos, tmp_path / "src.mip", name="dst", on_conflict="merge")
    assert any("keeps its own" in m for m in report.messages)
    assert [r["id"] for r in mos.extraction_rules("dst")["rules"]] == ["no-tea"]
    manifest = manifest_of(tmp_path / "src.mip")
    manifest["extraction"]["rules"][0]["kind"] = "sometimes"
    bad = rewrite(tmp_path / "src.mip", tmp_path / "bad.mip",
                  replace={"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(ArchiveError, match="extraction"):
        import_archive(mos, bad, name="other")
    assert "other" not in {c.name for c in mos.list_cubes()}


def test_import_merge_checks_only_the_versions_it_adds(sqlite_mos: MemOS,
                                                      tmp_path: Path) -> None:
    """A cube that already holds an old version (stored before the rule) still takes the
    newer versions of a pull; a newer version the rule refuses stops the import."""
    mos = sqlite_mos
    mos.create_cube("src")
    [item] = mos.add("src", SECRET)
    export_cube(mos, "src", tmp_path / "v1.mip")
    import_archive(mos, tmp_path / "v1.mip", name="dst")
    mos.set_extraction_rules("dst", rules=[HEALTH_RULE])
    mos.update(item.id, text="Maya likes green tea")
    export_cube(mos, "src", tmp_path / "v2.mip")
    report = import_archive(mos, tmp_path / "v2.mip", name="dst", on_conflict="merge")
    assert report.versions_added == 1
    assert [i.text for i in mos.list("dst")] == ["Maya likes green tea"]
    mos.update(item.id, text="Maya's blood pressure is 150/95")
    export_cube(mos, "src", tmp_path / "v3.mip")
    with pytest.raises(RefusedByRuleError):
        import_archive(mos, tmp_path / "v3.mip", name="dst", on_conflict="merge")
    assert [i.text for i in mos.list("dst")] == ["Maya likes green tea"]


def test_mcp_add_is_refused_with_the_rule(sqlite_mos: MemOS) -> None:
    mos = sqlite_mos
    mos.create_cube("c")
    mos.set_extraction_rules("c", rules=[HEALTH_RULE])

    async def main() -> None:
        async with Client(build_mcp_server(mos)) as client:
            result = await client.call_tool("add_memory", {"text": SECRET, "cube": "c"})
            assert result.is_error
            assert "refused_by_rule" in result.content[0].text  # type: ignore[union-attr]
            assert "no-health" in result.content[0].text  # type: ignore[union-attr]

    anyio.run(main)
    assert _everything(mos, "c") == []
    assert _refusals(mos, "c")[0].detail["rule_id"] == "no-health"


# --- MemReader ---------------------------------------------------------------------------------
TURN = ("I was diagnosed with diabetes last year. I love spicy Thai curry. "
        "I work as a software engineer at Google.")


def _derived(mos: MemOS, cube: str) -> list[MemoryItem]:
    return [i for i in mos.list(cube, limit=1000) if i.memory_type.value != "episode"]


def test_conversation_keeps_all_but_what_a_rule_refuses(mos: MemOS) -> None:
    mos.create_cube("chat")
    mos.set_extraction_rules("chat", rules=[HEALTH_RULE])
    out = mos.add("chat", messages=[{"role": "user", "name": "Maya", "content": TURN}],
                  infer=True)
    [episode] = out
    assert episode.text == ("Maya: [withheld by rule no-health] I love spicy Thai curry. "
                            "I work as a software engineer at Google.")
    assert episode.metadata["withheld"] == [{"rule_id": "no-health",
                                             "rule_name": "never store health data"}]
    texts = sorted(i.text for i in _derived(mos, "chat"))
    assert texts == ["Maya loves spicy Thai curry.",
                     "Maya works as a software engineer at Google."]
    [entry] = _refusals(mos, "chat")
    assert entry.detail["action"] == "withheld"
    assert entry.detail["rule_id"] == "no-health"
    assert entry.items == ((episode.id, 1),)
    assert entry.detail["sha256"] == text_hash("I was diagnosed with diabetes last year.")
    _no_secret_anywhere(mos, "chat", ("diabetes", "diagnosed"))


def test_reader_drops_only_the_refused_candidate(sqlite_mos: MemOS) -> None:
    """An episode stored before the rule (its extraction still queued) keeps its text —
    nothing stored is lost — but the candidate the rule refuses is not written."""
    mos = sqlite_mos
    mos.create_cube("chat")
    out = mos.add("chat", messages=[{"role": "user", "name": "Maya", "content": TURN}],
                  infer=True, wait=False)
    mos.set_extraction_rules("chat", rules=[HEALTH_RULE])
    job = mos.reader.process_next_job()
    assert job is not None and job.state == "done"
    assert mos.get(out[0].id).text.endswith(TURN)
    texts = sorted(i.text for i in _derived(mos, "chat"))
    assert texts == ["Maya loves spicy Thai curry.",
                     "Maya works as a software engineer at Google."]
    ops = job.result["ops"]
    assert ops == {"REFUSED": 1, "ADD": 2}
    refused = [d for d in job.result["decisions"] if d["op"] == "REFUSED"]
    assert refused[0]["reason"] == "refused by rule no-health (never store health data)"
    assert refused[0]["text"] == ""  # the job result does not keep the refused text
    [entry] = _refusals(mos, "chat")
    assert entry.detail["action"] == "dropped"
    assert entry.detail["episodes"] == [out[0].id]


def test_a_queued_memory_command_is_refused_not_failed(sqlite_mos: MemOS) -> None:
    mos = sqlite_mos
    mos.create_cube("chat")
    mos.add("chat", messages=[{"role": "user", "name": "Maya",
                               "content": "Remember that my blood pressure is 150/95."}],
            infer=True, wait=False)
    mos.set_extraction_rules("chat", rules=[HEALTH_RULE])
    job = mos.reader.process_next_job()
    assert job is not None and job.state == "done", job
    assert job.result["ops"] == {"REFUSED": 1}
    assert _derived(mos, "chat") == []
    assert _refusals(mos, "chat")[0].detail["rule_id"] == "no-health"


def test_categories_are_assigned_without_a_model(mos: MemOS) -> None:
    mos.create_cube("c")
    mos.set_extraction_rules("c", categories=CATEGORIES)
    mos.add("c", messages=[
        {"role": "user", "name": "Leo", "content": "I love spicy Thai curry."},
        {"role": "user", "name": "Leo", "content": "The project deadline moved to May."},
        {"role": "user", "name": "Leo", "content": "I painted a sunset last week."},
    ], infer=True)
    tags = {i.text: [t for t in i.tags if t.startswith("category:")]
            for i in _derived(mos, "c")}
    assert tags["Leo loves spicy Thai curry."] == ["category:food"]  # by similarity
    [deadline] = [t for t in tags if "deadline" in t]
    assert tags[deadline] == ["category:work"]  # by keyword
    [sunset] = [t for t in tags if "sunset" in t]
    assert tags[sunset] == []  # unrelated: no category
    hits = mos.search("what does Leo eat", "c", filters=SearchFilters(tags=["category:food"]))
    assert [h.item.text for h in hits] == ["Leo loves spicy Thai curry."]


def test_category_deny_and_allow_rules(sqlite_mos: MemOS) -> None:
    mos = sqlite_mos
    mos.create_cube("c")
    mos.set_extraction_rules("c", categories=CATEGORIES, rules=[
        {"name": "no health talk", "category": "health"},
        {"name": "keep order numbers", "kind": "allow", "patterns": [r"\border #?\d{4,}"],
         "category": "work"}])
    with pytest.raises(RefusedByRuleError) as refused:  # no keyword: the category decides
        mos.add("c", "Leo has had a bad cough and a fever since Monday")
    assert refused.value.rule_id == "no-health-talk"
    mos.add("c", messages=[{"role": "user", "name": "Leo",
                            "content": "Order #48213 for the office chairs."}], infer=True)
    [kept] = _derived(mos, "c")  # the rule extractor alone keeps nothing of this turn
    assert "48213" in kept.text
    assert "category:work" in kept.tags
    assert kept.metadata["reader"]["extractor"] == "rule:keep-order-numbers"


def test_model_prompt_carries_the_cube_guidance(sqlite_mos: MemOS, local) -> None:
    """With a model, the prompt lists instructions, refused topics and categories, and a
    category the model names is kept; the deny rule holds whatever the model writes."""
    mos = sqlite_mos
    mos.create_cube("c")
    mos.set_extraction_rules("c", categories=CATEGORIES, rules=[HEALTH_RULE],
                             instructions="Only remember what concerns food or work.")
    config = load(mos, mos.get_cube("c").id)
    json_extractor = guided(LLMExtractor(local, fmt="json", max_new_tokens=64), config)
    [system] = [m["content"] for m in json_extractor.messages(Turn("hi", "Leo"), [])
                if m["role"] == "system"]
    assert "Only remember what concerns food or work." in system
    assert "Never extract memories about: never store health data" in system
    assert '"category"' in system and "- food: food, cooking" in system
    [(kind, text, _, category)] = json_extractor.parse(
        '{"memories": [{"type": "preference", "text": "Leo loves curry", "category": "food"}]}')
    assert (text, category) == ("Leo loves curry", "food")
    cands = json_extractor.extract([Turn("I love curry", "Leo")]).candidates  # real model
    assert all(c.tags.count("category:food") <= 1 for c in cands)

    mos.reader = type(mos.reader)(mos, extractor=LLMExtractor(local, fmt="lines",
                                                              max_new_tokens=48))
    mos.add("c", messages=[{"role": "user", "name": "Leo",
                            "content": "My blood pressure is high. I love curry."}],
            infer=True)
    _no_secret_anywhere(mos, "c", ("blood pressure",))


# --- the config: storage, versions, permissions -------------------------------------------------
def test_config_is_versioned_validated_and_audited(mos: MemOS) -> None:
    mos.create_cube("c")
    assert mos.extraction_rules("c")["version"] == 0
    first = mos.set_extraction_rules("c", categories=CATEGORIES, rules=[HEALTH_RULE],
                                     instructions="Never store health data.")
    assert first["version"] == 1 and first["updated_by"] == "local"
    second = mos.set_extraction_rules("c", instructions="Be brief.", expected_version=1)
    assert second["version"] == 2
    assert second["rules"] == first["rules"]  # parts not given are kept
    assert second["instructions"] == "Be brief."
    with pytest.raises(ConflictError):
        mos.set_extraction_rules("c", instructions="stale", expected_version=1)
    for bad in ([{"name": "x", "patterns": ["(unclosed"]}],
                [{"name": "x", "pii": ["blood_type"]}],
                [{"name": "x", "category": "nope"}],
                [{"name": "x"}],
                [{"name": "x", "kind": "maybe", "keywords": ["a"]}],
                [HEALTH_RULE, HEALTH_RULE]):
        with pytest.raises(ValidationError):
            mos.set_extraction_rules("c", rules=bad)
    with pytest.raises(ValidationError):
        mos.set_extraction_rules("c", categories=[{"name": "food"}, {"name": "food"}])
    assert mos.extraction_rules("c")["version"] == 2  # refused edits change nothing
    changes = [e for e in mos.audit_log(cube="c") if e.op == "set_extraction_rules"]
    assert [e.detail["version"] for e in changes] == [2, 1]
    assert changes[-1].detail["rules"] == ["no-health"]
    assert set(changes[-1].detail["categories"]) == {"health", "food", "work"}


def test_concurrent_policy_and_rule_changes_lose_nothing(mos: MemOS) -> None:
    mos.create_cube("c")
    errors: list[BaseException] = []

    def rules(n: int) -> None:
        try:
            for i in range(n):
                mos.set_extraction_rules("c", instructions=f"round {i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def policy(n: int) -> None:
        try:
            for i in range(n):
                mos.set_cube_policy("c", ttl={"event": 3600 + i})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=rules, args=(15,)) for _ in range(2)]
    threads.append(threading.Thread(target=policy, args=(15,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert mos.extraction_rules("c")["version"] == 30  # no change was lost
    assert mos.cube_policy("c")["ttl"] == {"event": 3614}


def test_only_owner_or_admin_changes_rules(sqlite_mos: MemOS) -> None:
    mos = sqlite_mos
    mos.create_user("olga", role="owner")
    mos.create_user("mo", role="member")
    olga = mos.as_actor(mos.authenticate(mos.create_api_key("olga")[1]))
    mo = mos.as_actor(mos.authenticate(mos.create_api_key("mo")[1]))
    olga.create_cube("team")
    olga.share_cube("team", "mo", ["read", "write"])
    mo.create_cube("mine")  # a member owns this one but has no share permission on it
    olga.set_extraction_rules("team", rules=[HEALTH_RULE])
    assert mo.extraction_rules("team")["rules"][0]["id"] == "no-health"  # may read them
    with pytest.raises(PermissionDeniedError):
        mo.set_extraction_rules("team", rules=[])
    with pytest.raises(PermissionDeniedError):
        mo.set_extraction_rules("mine", rules=[HEALTH_RULE])
    with pytest.raises(RefusedByRuleError):  # the rule binds every writer, admins included
        mo.add("team", SECRET)
    with pytest.raises(RefusedByRuleError):
        mos.add("team", SECRET)
    assert mos.set_extraction_rules("team", rules=[])["version"] == 2  # an admin may


def test_dry_run_writes_nothing(sqlite_mos: MemOS) -> None:
    mos = sqlite_mos
    mos.create_cube("c")
    mos.set_extraction_rules("c", categories=CATEGORIES, rules=[HEALTH_RULE])
    seq = mos.audit_log(limit=1)[0].seq
    result = mos.test_extraction_rules("c", "My blood pressure is fine. I love pizza.")
    assert result["direct_write"] == "refused"
    assert result["denied_by"] == {"id": "no-health", "name": "never store health data",
                                   "kind": "deny"}
    assert result["as_raw_input"] == "[withheld by rule no-health] I love pizza."
    assert mos.test_extraction_rules("c", "I love pizza.")["direct_write"] == "stored"
    assert mos.test_extraction_rules("c", "I love pizza.")["categories"] == ["food"]
    assert mos.audit_log(limit=1)[0].seq == seq
    assert _everything(mos, "c") == []


def test_config_round_trips_through_its_stored_form() -> None:
    config = ExtractionConfig.from_dict({"categories": CATEGORIES, "rules": [HEALTH_RULE],
                                         "instructions": "x", "threshold": 0.3})
    assert ExtractionConfig.from_dict(config.as_dict()) == config


# --- REST and CLI ------------------------------------------------------------------------------
def test_rest_round_trip_over_http(sqlite_mos: MemOS) -> None:
    mos = sqlite_mos
    mos.create_user("olga", role="owner")
    mos.create_user("mo", role="member")
    _, olga = mos.create_api_key("olga")
    _, mo = mos.create_api_key("mo")
    mos.as_actor(mos.authenticate(olga)).create_cube("team")
    mos.as_actor(mos.authenticate(olga)).share_cube("team", "mo", ["read", "write"])
    with LiveServer(create_app(mos)) as url:
        as_olga = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {olga}"},
                               timeout=60)
        as_mo = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mo}"},
                             timeout=60)
        assert as_olga.get("/api/v1/cubes/team/extraction").json()["version"] == 0
        put = as_olga.put("/api/v1/cubes/team/extraction", json={
            "categories": CATEGORIES, "rules": [HEALTH_RULE],
            "instructions": "Never store health data."})
        assert put.status_code == 200, put.text
        assert put.json()["version"] == 1
        got = as_mo.get("/api/v1/cubes/team/extraction").json()
        assert got["rules"][0]["id"] == "no-health" and len(got["categories"]) == 3
        denied = as_mo.put("/api/v1/cubes/team/extraction", json={"rules": []})
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "permission_denied"
        stale = as_olga.put("/api/v1/cubes/team/extraction",
                            json={"instructions": "x", "expected_version": 0})
        assert stale.status_code == 409
        bad = as_olga.put("/api/v1/cubes/team/extraction",
                          json={"rules": [{"name": "x", "patterns": ["("]}]})
        assert bad.status_code == 400 and "bad regex" in bad.json()["error"]["message"]

        refused = as_mo.post("/api/v1/cubes/team/memories", json={"text": SECRET})
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "refused_by_rule"
        assert "no-health" in refused.json()["error"]["message"]
        chat = as_mo.post("/api/v1/cubes/team/memories", json={
            "messages": [{"role": "user", "name": "Mo", "content": TURN}], "infer": True})
        assert chat.status_code == 201, chat.text
        assert chat.json()["items"][0]["text"].startswith("Mo: [withheld by rule no-health]")
        dry = as_mo.post("/api/v1/cubes/team/extraction/test", json={"text": SECRET})
        assert dry.json()["denied_by"]["id"] == "no-health"
        with MemosysClient(url, api_key=olga) as client:  # the Python client: same rules, types
            assert client.extraction_rules("team")["version"] == 1
            assert client.set_extraction_rules("team", instructions="Be brief.",
                                               expected_version=1)["version"] == 2
            assert client.test_extraction_rules("team", SECRET)["direct_write"] == "refused"
            with pytest.raises(RefusedByRuleError) as refused_remote:
                client.add("team", SECRET)
            assert refused_remote.value.rule_id == "no-health"
    audit = mos.audit_log(cube="team", limit=1000)
    assert {(e.actor, e.detail.get("action")) for e in audit
            if e.op == "extraction.refused"} == {("mo", "refused"), ("mo", "withheld"),
                                                 ("olga", "refused")}


def test_cli_show_set_test(home: Path, embedder) -> None:
    runner = CliRunner()

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--home", str(home)])
        assert result.exit_code == code, result.output + str(result.exception or "")
        return result.stdout

    cli("cubes", "create", "c")
    cfg = json.loads(cli("extraction", "set", "c", "--deny", "health=diabetes,insulin",
                         "--deny-regex", r"health=blood\s+sugar", "--deny-pii", "phones=phone",
                         "--category", "food=food, cooking and restaurants",
                         "--instructions", "Never store health data.", "--json"))
    assert cfg["version"] == 1
    [health, phones] = cfg["rules"]
    assert health["keywords"] == ["diabetes", "insulin"]
    assert health["patterns"] == [r"blood\s+sugar"]
    assert phones["pii"] == ["phone"]
    shown = json.loads(cli("extraction", "show", "c", "--json"))
    assert shown["categories"][0]["name"] == "food"
    dry = json.loads(cli("extraction", "test", "c", "Her blood  sugar is low", "--json"))
    assert dry["denied_by"]["id"] == "health"
    assert "refused by rule health" in cli("extraction", "test", "c", "I take insulin")
    cli("add", "I take insulin daily", "-c", "c", code=2)  # RefusedByRuleError: invalid input
    cfg = json.loads(cli("extraction", "set", "c", "--remove", "phones", "--json"))
    assert [r["id"] for r in cfg["rules"]] == ["health"]
