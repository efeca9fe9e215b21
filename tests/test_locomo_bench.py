"""`memosys bench locomo`: data loading, provenance mapping, the metrics (exact values on a
hand-made conversation), and the command end to end on a tiny conversation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memosys.bench.locomo import (
    DEFAULT_LOCOMO,
    METRIC_KEYS,
    RunResult,
    ablation_configs,
    aggregate,
    hit_turns,
    load_locomo,
    normalize_evidence,
    parse_session_time,
    question_metrics,
)
from memosys.interface.cli import app
from memosys.operation.retrieval import STAGES, RetrievalConfig
from memosys.types import MemoryItem, Source

TINY = [{
    "sample_id": "tiny-1",
    "conversation": {
        "speaker_a": "Alice",
        "speaker_b": "Bob",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Alice", "dia_id": "D1:1", "text": "I adopted a beagle called Rex!"},
            {"speaker": "Bob", "dia_id": "D1:2", "text": "Congrats! How old is he?"},
            {"speaker": "Alice", "dia_id": "D1:3", "text": "Two years old, and very lazy."},
            {"speaker": "Bob", "dia_id": "D1:4", "text": "Look at my new bike.",
             "img_url": ["http://example.invalid/bike.jpg"],
             "blip_caption": "a photo of a red bicycle", "query": "red bike"},
        ],
        "session_2_date_time": "10:00 am on 2 July, 2023",
        "session_2": [
            {"speaker": "Bob", "dia_id": "D2:1", "text": "I rode my bike to Oslo yesterday."},
            {"speaker": "Alice", "dia_id": "D2:2", "text": "Wow, that is far! I took Rex "
                                                          "to the vet today."},
        ],
    },
    "qa": [
        {"question": "What pet did Alice adopt?", "answer": "a beagle", "evidence": ["D1:1"],
         "category": 4},
        {"question": "How old is Alice's dog?", "answer": "two", "evidence": ["D1:3; D1:1"],
         "category": 1},
        {"question": "When did Bob ride to Oslo?", "answer": "1 July 2023",
         "evidence": ["D:2:1"], "category": 2},
        {"question": "What colour is Bob's bike?", "answer": "red", "evidence": ["D1:4"],
         "category": 3},
        {"question": "What did Bob adopt?", "answer": "nothing", "evidence": [],
         "category": 5},
        {"question": "What is unanswerable?", "answer": "?", "evidence": ["D9:9"],
         "category": 4},
    ],
}]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def test_loading_normalises_turns_times_and_evidence(tiny: Path) -> None:
    [conv] = load_locomo(tiny)
    assert conv.speakers == ("Alice", "Bob")
    assert [t.dia_id for t in conv.turns] == ["D1:1", "D1:2", "D1:3", "D1:4", "D2:1", "D2:2"]
    assert conv.turns[3].text == "Look at my new bike. [shares a photo of a red bicycle]"
    assert conv.turns[0].at == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert conv.turns[4].session == "session_2"
    # category 5 and questions without a real evidence turn are left out
    assert [(q.evidence, q.category) for q in conv.questions] == [
        (("D1:1",), 4), (("D1:3", "D1:1"), 1), (("D2:1",), 2), (("D1:4",), 3)]
    assert parse_session_time("8:17 pm on 21 September, 2023") == datetime(
        2023, 9, 21, 20, 17, tzinfo=UTC)
    assert parse_session_time("sometime") is None
    assert normalize_evidence(["D8:6; D9:17", "D", "D:11:26", "D8:6"],
                              {"D8:6", "D11:26"}) == ("D8:6", "D11:26")


def test_recall_and_hit_have_exact_values() -> None:
    retrieved = ["D1:2", "D1:1", "D3:4", "D1:5", "D2:2"] + [f"D9:{i}" for i in range(20)]
    row = question_metrics(retrieved, ["D1:1", "D2:2", "D7:7", "D1:9"])
    assert row == {"recall@1": 0.0, "recall@5": 0.5, "recall@10": 0.5, "recall@20": 0.5,
                   "hit@10": 1.0}
    assert question_metrics(["D1:1"], ["D1:1"])["recall@1"] == 1.0
    assert question_metrics(retrieved[5:], ["D1:1"])["hit@10"] == 0.0
    with pytest.raises(ValueError):
        question_metrics(retrieved, [])
    agg = aggregate([row, question_metrics(["D1:1"], ["D1:1"])], [10.0, 30.0])
    assert agg["recall@1"] == 0.5 and agg["recall@5"] == 0.75 and agg["questions"] == 2
    assert agg["search_p50_ms"] == 20.0
    assert tuple(agg) == METRIC_KEYS
    result = RunResult([row, row, question_metrics(["D1:1"], ["D1:1"])], [1.0, 2.0, 3.0],
                       [1, 1, 4])
    assert set(result.by_category()) == {"1", "4"}
    assert result.by_category()["4"]["recall@1"] == 1.0


def test_provenance_maps_derived_memories_to_all_their_turns() -> None:
    def turn(dia_id: str) -> MemoryItem:
        return MemoryItem(cube_id="c", text=dia_id, source=Source(message_ids=[dia_id]))

    a, b, c = turn("D1:1"), turn("D1:2"), turn("D2:5")
    fact = MemoryItem(cube_id="c", text="Alice has a beagle", derived_from=[a.id, b.id])
    summary = MemoryItem(cube_id="c", text="about Alice", derived_from=[fact.id, c.id])
    store = {i.id: i for i in (a, b, c, fact, summary)}

    def lookup(ids: list[str]) -> dict[str, MemoryItem]:
        return {i: store[i] for i in ids if i in store}

    # a derived memory counts for every turn it came from, at its own rank; repeats keep
    # the first rank
    assert hit_turns([c, fact, a], lookup) == ["D2:5", "D1:1", "D1:2"]
    assert hit_turns([summary], lookup) == ["D1:1", "D1:2", "D2:5"]
    retrieved = hit_turns([fact, c], lookup)
    assert question_metrics(retrieved, ["D1:2"])["recall@1"] == 0.0
    assert question_metrics(retrieved, ["D1:2"])["recall@5"] == 1.0


def test_ablation_toggles_each_stage_once() -> None:
    configs = ablation_configs(RetrievalConfig())
    assert configs["all (default)"] == RetrievalConfig()
    toggled = [k for k in configs if k[0] in "+-"]
    assert sorted(k[1:] for k in toggled) == sorted(STAGES)
    assert configs["none (RRF only)"] == RetrievalConfig.baseline()


def test_bench_command_writes_the_json_shape(tiny: Path, tmp_path: Path, embedder) -> None:
    out = tmp_path / "locomo.json"
    result = CliRunner().invoke(app, ["bench", "locomo", "--data", str(tiny), "--json",
                                      str(out), "--conversations", "1", "--questions", "3",
                                      "--ablation"])
    assert result.exit_code == 0, result.output + str(result.exception or "")
    report = json.loads(out.read_text())
    assert set(report) == {"overall", "by_category", "baselines", "ablation"}
    assert set(report["overall"]) == set(METRIC_KEYS)
    assert report["overall"]["questions"] == 3
    assert set(report["by_category"]) == {"1", "2", "4"}
    assert set(report["baselines"]) == {"bm25", "dense"}
    for metrics in (*report["baselines"].values(), *report["ablation"].values()):
        assert set(metrics) == set(METRIC_KEYS)
    assert set(report["ablation"]) == set(ablation_configs(RetrievalConfig()))
    # six turns, top 20: every evidence turn is found by the pipeline and the dense search
    assert report["overall"]["recall@20"] == 1.0
    assert report["baselines"]["dense"]["recall@20"] == 1.0
    assert "ingestion" in result.output


def test_bench_with_extracted_facts_credits_their_turns(tiny: Path, tmp_path: Path,
                                                        embedder) -> None:
    """--facts: the MemReader extracts memories at ingestion; they are searched with the
    turns and count for the turns they came from."""
    out = tmp_path / "facts.json"
    result = CliRunner().invoke(app, ["bench", "locomo", "--data", str(tiny), "--json",
                                      str(out), "--conversations", "1", "--facts"])
    assert result.exit_code == 0, result.output + str(result.exception or "")
    report = json.loads(out.read_text())
    assert report["overall"]["recall@20"] == 1.0


def test_bench_command_reports_missing_data(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "locomo", "--data", str(tmp_path / "no.json")])
    assert result.exit_code == 2


@pytest.mark.skipif(not DEFAULT_LOCOMO.exists(), reason="LoCoMo dev split not present")
def test_dev_split_loads_with_the_documented_counts() -> None:
    convs = load_locomo(DEFAULT_LOCOMO)
    assert len(convs) == 5
    assert sum(len(c.turns) for c in convs) == 2760
    assert sum(len(c.questions) for c in convs) == 760


def test_bench_command_graph_switch(tiny: Path, tmp_path: Path, embedder) -> None:
    out = tmp_path / "locomo-graph.json"
    result = CliRunner().invoke(app, ["bench", "locomo", "--data", str(tiny), "--json",
                                      str(out), "--graph", "on"])
    assert result.exit_code == 0, result.output + str(result.exception or "")
    assert json.loads(out.read_text())["overall"]["recall@20"] == 1.0
    bad = CliRunner().invoke(app, ["bench", "locomo", "--data", str(tiny), "--graph", "x"])
    assert bad.exit_code == 2
