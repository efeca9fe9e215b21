"""The graph through the runtime: LLM-free extraction, `MemOS.graph`, the retrieval stage
and `memosys graph ...` (storage behaviour on both backends: test_graph_store.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memosys.config import Settings
from memosys.errors import NotFoundError, ValidationError
from memosys.infra.vault.base import ItemFilter
from memosys.infra.vault.graph_base import EntityType, entity_key
from memosys.interface.cli import app
from memosys.operation.graph_extract import extract_graph
from memosys.operation.graph_search import GraphStage
from memosys.operation.retrieval import RetrievalConfig
from memosys.system import MemOS
from memosys.types import MemoryItem, MemoryType

JAN = datetime(2023, 1, 10, tzinfo=UTC)
JUN = datetime(2023, 6, 1, tzinfo=UTC)


def _graph(text: str, speaker: str | None = None):
    item = MemoryItem(cube_id="c", text=f"{speaker}: {text}" if speaker else text,
                      metadata={"speaker": speaker} if speaker else {},
                      memory_type=MemoryType.EPISODE if speaker else MemoryType.FACT)
    g = extract_graph(item)
    return ({(e.name, e.type.value, e.owner, e.role) for e in g.entities},
            {(r.subject, r.predicate, r.object) for r in g.relations}, g)


def test_extraction_rules() -> None:
    entities, relations, g = _graph(
        "Thanks Melanie! I moved to New York and I work at Sunrise Adoption Agency.",
        "Caroline")
    assert {("Caroline", "person", None, None), ("Melanie", "person", None, None),
            ("New York", "place", None, None),
            ("Sunrise Adoption Agency", "organisation", None, None)} <= entities
    assert relations == {("Caroline", "lives_in", "New York"),
                         ("Caroline", "works_at", "Sunrise Adoption Agency")}
    assert all(r.functional for r in g.relations)
    assert g.entities[0].speaker  # the speaker comes first, marked as such
    # relative references: owner + role, named or not
    entities, relations, _ = _graph("My mom and my sister Anna went to the Pride Parade.",
                                    "Caroline")
    assert ("mother", "person", "Caroline", "mother") in entities
    assert ("Pride Parade", "event", None, None) in entities
    assert relations >= {("Caroline", "sister", "Anna")}
    entities, relations, _ = _graph("Melanie's kids love painting.")
    assert ("kids", "person", "Melanie", "kids") in entities
    # a MemReader fact in the third person, with the higher confidence of extracted facts
    _, relations, g = _graph("Caroline is originally from Sweden.")
    assert relations == {("Caroline", "from", "Sweden")}
    assert g.relations[0].confidence > 0.8
    # ordinary capitalised sentence openers are not entities
    entities, _, _ = _graph("Painting is fun. Wow, that sounds great!", "Melanie")
    assert {e[0] for e in entities} == {"Melanie"}
    assert entity_key("The Caroline's") == "caroline" == entity_key("  CAROLINE ")


def _conversation(mos: MemOS) -> list[MemoryItem]:
    mos.create_cube("conv")
    first = mos.add("conv", messages=[
        {"name": "Caroline", "content": "I live in Boston and I work at Sunrise Adoption "
                                        "Agency.", "timestamp": JAN},
        {"name": "Melanie", "content": "That's great! My husband John and I went to Lake "
                                       "Tahoe.", "timestamp": JAN},
        {"name": "Caroline", "content": "My sister is visiting next week.", "timestamp": JAN},
        {"name": "Caroline", "content": "My sister Anna loves hiking.", "timestamp": JAN},
    ], session="s1")
    second = mos.add("conv", messages=[
        {"name": "Caroline", "content": "Big news: I moved to Denver last month.",
         "timestamp": JUN},
        {"name": "Melanie", "content": "Anna went to Yosemite with the Ramblers Club.",
         "timestamp": JUN},
    ], session="s2")
    return first + second


def test_graph_api_follows_the_memory_lifecycle(mos: MemOS) -> None:
    items = _conversation(mos)
    g = mos.graph
    anna = g.entity("conv", "Caroline's sister")  # a relative reference, resolved
    assert anna.name == "Anna" and anna.type == EntityType.PERSON
    assert g.entity("conv", "ANNA").id == anna.id
    assert {m.id for m in g.memories("conv", "Anna")} >= {items[2].id, items[3].id}
    march, july = datetime(2023, 3, 1, tzinfo=UTC), datetime(2023, 7, 1, tzinfo=UTC)
    assert [r.object.name for r in g.facts("conv", "Caroline", as_of=march,
                                           predicate="lives_in")] == ["Boston"]
    assert [r.object.name for r in g.facts("conv", "Caroline", as_of=july,
                                           predicate="lives_in")] == ["Denver"]
    changed = g.changes("conv", "Caroline", since=datetime(2023, 5, 1, tzinfo=UTC))
    assert {(r.object.name, r.valid_to) for r in changed} >= {("Boston", JUN), ("Denver", None)}
    assert [(e.name, p) for e, p in g.path("conv", "Boston", "Anna")] == [
        ("Boston", ""), ("Caroline", "lives_in"), ("Anna", "sister")]
    # delete -> the move is forgotten; rollback -> it is back; purge -> gone for good
    mos.delete(items[4].id)
    assert [r.object.name for r in g.facts("conv", "Caroline", as_of=july,
                                           predicate="lives_in")] == ["Boston"]
    with pytest.raises(NotFoundError):
        g.entity("conv", "Denver")
    mos.rollback(items[4].id, 1)
    assert g.entity("conv", "Denver").mentions == 1
    before = (g.stats("conv"), [(e.id, e.name, e.mentions) for e in g.entities("conv")])
    assert g.build("conv") == before[0]  # a rebuild gives the same graph
    assert [(e.id, e.name, e.mentions) for e in g.entities("conv")] == before[1]
    mos.purge([items[4].id])
    with pytest.raises(NotFoundError):
        g.entity("conv", "Denver")
    with pytest.raises(ValidationError):
        g.entities("conv", type="planet")


def test_graph_stage_expands_along_relations(mos: MemOS) -> None:
    items = _conversation(mos)
    mos.retriever.config = RetrievalConfig()
    stage = GraphStage(mos.vault)
    cube_id = mos.get_cube("conv").id
    linked = {e.name for e in stage.link("Where did Caroline's sister go hiking?", cube_id)}
    assert "Anna" in linked  # "Caroline's sister" resolved through the graph
    mos.retriever.insert_stage(stage)
    hits = mos.search("Where did Caroline's sister travel?", "conv", top_k=6)
    by_id = {h.item.id: h for h in hits}
    # the Yosemite turn names Anna only: found through the sister relation
    assert items[5].id in by_id and by_id[items[5].id].scores.get("graph", 0) > 0
    # the stage respects the search filter
    only_s1 = mos.search("Where did Caroline's sister travel?", "conv", top_k=6,
                         filters={"session": "s1"})
    assert all(h.item.source.session == "s1" for h in only_s1)


def test_graph_stage_two_hops_weighted_by_validity(mos: MemOS) -> None:
    from memosys.operation.graph_search import GraphSearchConfig, _validity

    _conversation(mos)
    cube_id = mos.get_cube("conv").id
    one = GraphStage(mos.vault, GraphSearchConfig(hops=1, max_share=1.0, min_mentions=100))
    two = GraphStage(mos.vault, GraphSearchConfig(hops=2, max_share=1.0, min_mentions=100))
    flt = ItemFilter(cube_ids=(cube_id,))
    # Boston -lives_in- Caroline -sister- Anna: Anna's memories are two hops from Boston
    anna = set(mos.vault.graph_mentioning([mos.graph.entity("conv", "Anna").id])[
        mos.graph.entity("conv", "Anna").id])
    near, far = one.expand("Boston", flt, {}), two.expand("Boston", flt, {})
    assert anna - set(near) and anna - set(near) <= set(far)
    # a second hop adds less than the first: decayed by hop and confidence again
    assert max(far[i] for i in anna - set(near)) < max(near.values())
    # a hub cut-off of 0 relations walks nowhere: only the linked entity's own memories
    cut = GraphStage(mos.vault, GraphSearchConfig(hops=2, max_degree=0, max_share=1.0,
                                                  min_mentions=100)).expand("Boston", flt, {})
    assert set(cut) < set(far)
    # validity: Caroline lived in Boston until June; asked about March it counts fully
    boston = [r for r in mos.graph.facts("conv", "Caroline") if r.object.name == "Boston"][0]
    assert boston.valid_to == JUN
    march = (datetime(2023, 3, 1, tzinfo=UTC), datetime(2023, 3, 31, tzinfo=UTC))
    august = (datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 8, 31, tzinfo=UTC))
    assert _validity(boston, [march]) == 1.0
    assert _validity(boston, [august]) == 0.25
    assert _validity(boston, []) == 0.5


def test_settings_switch_the_graph(home: Path, embedder) -> None:
    with MemOS(Settings.load(home, graph="off"), embedder=embedder) as mos:
        mos.create_cube("c")
        mos.add("c", messages=[{"name": "Ann", "content": "I live in Oslo."}])
        assert mos.graph.stats("c").entities == 0
        with pytest.raises(ValidationError):
            mos.graph.build("c")
    with MemOS(Settings.load(home, graph_search="on"), embedder=embedder) as mos:
        names = [s.name for s in mos.retriever.stages]
        assert names.index("graph") == names.index("context") - 1
        assert mos.graph.build("c").entities == 2  # Ann, Oslo: built for the old memories
    with pytest.raises(ValidationError):
        Settings.load(home, graph="maybe")


def test_cli_graph_commands(home: Path, embedder) -> None:
    with MemOS(Settings.load(home), embedder=embedder) as mos:
        _conversation(mos)
    runner = CliRunner()

    def run(*args: str) -> object:
        result = runner.invoke(app, ["graph", *args, "-c", "conv", "--home", str(home),
                                     "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert run("build")["entities"] >= 8
    names = [e["name"] for e in run("entities", "--type", "place")]
    assert {"Boston", "Denver", "Lake Tahoe", "Yosemite"} <= set(names)
    page = run("entity", "Caroline", "--as-of", "2023-03-01")
    assert {(f["predicate"], f["object"]) for f in page["facts"]} >= {("lives_in", "Boston")}
    assert ("lives_in", "Denver") not in {(f["predicate"], f["object"]) for f in page["facts"]}
    near = {n["name"]: n for n in run("neighbours", "Anna", "--hops", "2")}
    assert near["Caroline"]["via"] == "sister" and near["Boston"]["hops"] == 2
    assert [s["entity"] for s in run("path", "Boston", "Anna")] == ["Boston", "Caroline", "Anna"]
    missing = runner.invoke(app, ["graph", "entity", "Nobody", "-c", "conv", "--home",
                                  str(home)])
    assert missing.exit_code == NotFoundError.exit_code


def test_reader_style_facts_keep_history_when_invalidated(mos: MemOS) -> None:
    """MemReader facts (third person, metadata "about"): when a new fact contradicts an
    old one, the reader invalidates the old memory with a valid_to; its relation stays as
    history and "as of" questions answer both dates."""
    mos.create_cube("facts")
    [old] = mos.add_items("facts", [MemoryItem(
        cube_id="x", text="Works at Acme Corp.", memory_type=MemoryType.FACT,
        valid_from=JAN, metadata={"about": "Caroline"})])
    [new] = mos.add_items("facts", [MemoryItem(
        cube_id="x", text="Caroline works at Globex Inc.", memory_type=MemoryType.FACT,
        valid_from=JUN, supersedes=old.id, metadata={"about": "Caroline"})])
    mos.update(old.id, state="invalidated", valid_to=JUN)
    facts = mos.graph.facts("facts", "Caroline", predicate="works_at")
    assert [(r.object.name, r.valid_to, r.sources[0][0]) for r in facts] == [
        ("Acme Corp", JUN, old.id), ("Globex Inc", None, new.id)]
    assert facts[0].confidence > 0.8  # an extracted fact, not a raw turn
    assert [r.object.name for r in mos.graph.facts(
        "facts", "Caroline", as_of=datetime(2023, 3, 1, tzinfo=UTC))] == ["Acme Corp"]
    mos.delete(old.id)  # deleted (not merely invalidated): no longer part of the graph
    assert [r.object.name for r in mos.graph.facts("facts", "Caroline")] == ["Globex Inc"]


def test_bench_graph_runs_small(tmp_path: Path) -> None:
    from rich.console import Console

    from memosys.bench.graph import run_graph_bench

    out = tmp_path / "graph.json"
    [row] = run_graph_bench([300], queries=5, json_file=out, out=Console(file=None,
                                                                          quiet=True))
    assert json.loads(out.read_text()) == [row]
    assert row["memories"] == 300 and row["entities"] > 10 and row["relations"] > 10
    assert row["graph_build_per_s"] > 0 and row["entity_query_p50_ms"] > 0
