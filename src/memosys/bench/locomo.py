"""`memosys bench locomo`: does retrieval find the evidence turns of LoCoMo questions?

Each conversation goes into its own cube through the Memory API (one turn = one episode
memory, "Speaker: text" plus the caption of a shared photo, the session date as event
time, the turn's `dia_id` as message id). Every question of categories 1-4 is searched
through the full `MemOS.search` path; results are mapped back to turns through provenance
(`source.message_ids`, and for derived memories the message ids of the memories they were
derived from) and scored against the question's evidence turns:

- recall@k: share of the evidence turns among the first k distinct retrieved turns
  (k = 1, 5, 10, 20), averaged over questions;
- hit@10: whether any evidence turn is in the first 10;
- search latency p50/p95 (ms per question) and ingestion rate (turns/s, embedding included).

Two baselines run on the same cubes in the same run: plain BM25 over turns
(`vault.search_text`) and plain dense MiniLM over turns (`vault.search_vector`). With
`--ablation` the pipeline is re-run with each stage of `RetrievalConfig` switched off.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from memosys.bench.search import DEFAULT_LOCOMO
from memosys.config import Settings
from memosys.errors import ValidationError
from memosys.infra.vault.base import ItemFilter
from memosys.models.embed import Embedder
from memosys.operation.retrieval import STAGES, RetrievalConfig, SearchHit
from memosys.system import MemOS
from memosys.types import MemoryItem

KS = (1, 5, 10, 20)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
METRIC_KEYS = (
    "recall@1", "recall@5", "recall@10", "recall@20", "hit@10",
    "search_p50_ms", "search_p95_ms", "questions",
)
_DEPTH = max(KS)


# --- data ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Turn:
    dia_id: str
    session: str
    speaker: str
    text: str
    """What is stored after "Speaker: " (the photo caption appended when one is shared)."""
    at: datetime | None


@dataclass(frozen=True)
class Question:
    question: str
    evidence: tuple[str, ...]
    category: int


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    speakers: tuple[str, ...]
    turns: tuple[Turn, ...]
    questions: tuple[Question, ...]


_SESSION_KEY = re.compile(r"^session_(\d+)$")
_DIA_ID = re.compile(r"D\s*:?\s*(\d+)\s*:\s*(\d+)")


def parse_session_time(text: str) -> datetime | None:
    """LoCoMo session stamps such as "1:56 pm on 8 May, 2023" (UTC); None if unreadable."""
    cleaned = " ".join(text.replace(",", " ").split())
    for fmt in ("%I:%M %p on %d %B %Y", "%I:%M %p on %d %b %Y", "%d %B %Y"):
        try:
            return datetime.strptime(cleaned, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def turn_text(turn: dict[str, Any]) -> str:
    """A turn's text as stored after the speaker prefix; a shared photo adds its caption."""
    text = str(turn.get("text", "")).strip()
    caption = str(turn.get("blip_caption") or "").strip()
    if caption:
        text = f"{text} [shares {caption}]".strip()
    return text


def normalize_evidence(raw: Iterable[str], known: set[str]) -> tuple[str, ...]:
    """Evidence ids as turn ids of the conversation: "D8:6; D9:17" is two ids, "D:11:26"
    is D11:26; ids that name no turn of the conversation are dropped."""
    out: list[str] = []
    for entry in raw:
        for major, minor in _DIA_ID.findall(str(entry)):
            dia_id = f"D{int(major)}:{int(minor)}"
            if dia_id in known and dia_id not in out:
                out.append(dia_id)
    return tuple(out)


def load_selection(data: Path, conversations: int | None = None,
                   questions: int | None = None) -> list[Conversation]:
    """The first `conversations` conversations (all: None or 0), each with its first
    `questions` questions (all: None), for the benches' quick runs."""
    data = Path(data)
    if not data.exists():
        raise ValidationError(f"no LoCoMo data at {data} (pass --data PATH)")
    convs = load_locomo(data)[: conversations if conversations else None]
    if questions is not None:
        convs = [replace(c, questions=c.questions[:questions]) for c in convs]
    return convs


def load_locomo(path: Path = DEFAULT_LOCOMO) -> list[Conversation]:
    data = json.loads(Path(path).read_text())
    conversations = []
    for n, sample in enumerate(data):
        conv = sample["conversation"]
        sessions = sorted(
            (int(m.group(1)), key) for key in conv if (m := _SESSION_KEY.match(key))
        )
        turns: list[Turn] = []
        for number, key in sessions:
            at = parse_session_time(str(conv.get(f"{key}_date_time", "")))
            for raw in conv[key] or []:
                text = turn_text(raw)
                if text:
                    turns.append(Turn(str(raw["dia_id"]), f"session_{number}",
                                      str(raw["speaker"]), text, at))
        known = {t.dia_id for t in turns}
        questions = []
        for qa in sample.get("qa", []):
            category = int(qa.get("category", 0))
            evidence = normalize_evidence(qa.get("evidence") or [], known)
            if category in CATEGORIES and evidence:
                questions.append(Question(str(qa["question"]), evidence, category))
        speakers = tuple(str(conv[k]) for k in ("speaker_a", "speaker_b") if conv.get(k))
        conversations.append(Conversation(str(sample.get("sample_id", f"conv-{n}")),
                                          speakers, tuple(turns), tuple(questions)))
    return conversations


# --- ingestion ----------------------------------------------------------------------------
def ingest(mos: MemOS, cube: str, conv: Conversation,
           progress: Callable[[int], None] | None = None, *,
           facts: bool = False) -> list[MemoryItem]:
    """One episode memory per turn, one `add` call per session (its own session id);
    `facts`: the MemReader also extracts memories from each session (`derived_from`)."""
    mos.ensure_cube(cube)
    stored: list[MemoryItem] = []
    by_session: dict[str, list[Turn]] = {}
    for turn in conv.turns:
        by_session.setdefault(turn.session, []).append(turn)
    for session, turns in by_session.items():
        messages = [
            {"role": "user", "name": t.speaker, "content": t.text, "id": t.dia_id,
             "timestamp": t.at}
            for t in turns
        ]
        stored.extend(mos.add(cube, messages=messages, session=session,
                              valid_from=turns[0].at, infer=facts))
        if progress is not None:
            progress(len(turns))
    return stored


# --- provenance and metrics ---------------------------------------------------------------
def hit_turns(items: Sequence[MemoryItem],
              lookup: Callable[[list[str]], dict[str, MemoryItem]]) -> list[str]:
    """Turn ids behind ranked memories, each kept at its first rank: a memory's own message
    ids, or for a derived memory the message ids of the memories it was derived from
    (followed through up to three levels of derivation)."""

    def turns_of(item: MemoryItem, depth: int) -> list[str]:
        if item.source.message_ids or depth >= 3 or not item.derived_from:
            return list(item.source.message_ids)
        parents = lookup(list(item.derived_from))
        return [m for p in item.derived_from if p in parents
                for m in turns_of(parents[p], depth + 1)]

    ordered: dict[str, None] = {}
    for item in items:
        for dia_id in turns_of(item, 0):
            ordered.setdefault(dia_id, None)
    return list(ordered)


def question_metrics(retrieved: Sequence[str], evidence: Sequence[str]) -> dict[str, float]:
    """recall@k and hit@10 of one question (retrieved: distinct turn ids, best first)."""
    wanted = set(evidence)
    if not wanted:
        raise ValueError("a question needs at least one evidence turn")
    row = {f"recall@{k}": len(wanted.intersection(retrieved[:k])) / len(wanted) for k in KS}
    row["hit@10"] = float(bool(wanted.intersection(retrieved[:10])))
    return row


def aggregate(rows: Sequence[dict[str, float]], latencies_ms: Sequence[float]
              ) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in METRIC_KEYS[:5]:
        out[key] = round(float(np.mean([r[key] for r in rows])), 4) if rows else 0.0
    lat = np.asarray(latencies_ms, dtype=float)
    out["search_p50_ms"] = round(float(np.percentile(lat, 50)), 2) if lat.size else 0.0
    out["search_p95_ms"] = round(float(np.percentile(lat, 95)), 2) if lat.size else 0.0
    out["questions"] = len(rows)
    return out


@dataclass
class RunResult:
    """Per-question rows of one retrieval method over the benchmark."""

    rows: list[dict[str, float]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    categories: list[int] = field(default_factory=list)

    def overall(self) -> dict[str, float]:
        return aggregate(self.rows, self.latencies_ms)

    def by_category(self) -> dict[str, dict[str, float]]:
        out = {}
        for cat in sorted(set(self.categories)):
            keep = [i for i, c in enumerate(self.categories) if c == cat]
            out[str(cat)] = aggregate([self.rows[i] for i in keep],
                                      [self.latencies_ms[i] for i in keep])
        return out


Searcher = Callable[[str, str], list[MemoryItem]]
"""(question, cube id) -> ranked memories."""


def evaluate(searcher: Searcher, lookup: Callable[[list[str]], dict[str, MemoryItem]],
             cube_id: str, questions: Sequence[Question], result: RunResult) -> RunResult:
    for q in questions:
        t0 = time.perf_counter()
        items = searcher(q.question, cube_id)
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
        result.rows.append(question_metrics(hit_turns(items, lookup), q.evidence))
        result.categories.append(q.category)
    return result


def pipeline_searcher(mos: MemOS, top_k: int = _DEPTH) -> Searcher:
    def search(query: str, cube_id: str) -> list[MemoryItem]:
        hits: list[SearchHit] = mos.search(query, [cube_id], top_k=top_k, record_access=False)
        return [h.item for h in hits]

    return search


def bm25_searcher(mos: MemOS, top_k: int = _DEPTH) -> Searcher:
    def search(query: str, cube_id: str) -> list[MemoryItem]:
        ranked = mos.vault.search_text(query, ItemFilter(cube_ids=(cube_id,)), top_k)
        items = mos.vault.get_many([i for i, _ in ranked])
        return [items[i] for i, _ in ranked if i in items]

    return search


def dense_searcher(mos: MemOS, top_k: int = _DEPTH) -> Searcher:
    def search(query: str, cube_id: str) -> list[MemoryItem]:
        vec = mos.embedder.embed([query])[0]
        ranked = mos.vault.search_vector(vec, ItemFilter(cube_ids=(cube_id,)), top_k)
        items = mos.vault.get_many([i for i, _ in ranked])
        return [items[i] for i, _ in ranked if i in items]

    return search


# --- the benchmark ------------------------------------------------------------------------
@dataclass
class LocomoReport:
    overall: dict[str, float]
    by_category: dict[str, dict[str, float]]
    baselines: dict[str, dict[str, float]]
    ablation: dict[str, dict[str, float]] | None
    ingest_turns_per_s: float
    turns: int
    variants: dict[str, dict[str, dict[str, float]]] | None = None
    """The pipeline without the extra stages (--graph/--topics on), per category and
    "all": measured on the same ingestion, question by question."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"overall": self.overall, "by_category": self.by_category,
                               "baselines": self.baselines}
        if self.ablation is not None:
            out["ablation"] = self.ablation
        if self.variants is not None:
            out["variants"] = self.variants
        return out


def ablation_configs(config: RetrievalConfig) -> dict[str, RetrievalConfig]:
    """The pipeline with each stage toggled: "-stage" switches off a stage that is on by
    default, "+stage" switches on one that is off; "none" is plain RRF fusion."""
    out = {"all (default)": config}
    for stage in STAGES:
        if getattr(config, stage):
            out[f"-{stage}"] = config.without(stage)
        else:
            out[f"+{stage}"] = replace(config, **{stage: True})
    out["none (RRF only)"] = config.without(*STAGES)
    return out


def run_locomo_bench(
    data: Path = DEFAULT_LOCOMO,
    json_file: Path | None = None,
    conversations: int | None = None,
    ablation: bool = False,
    out: Console | None = None,
    *,
    questions: int | None = None,
    config: RetrievalConfig | None = None,
    embedder: Embedder | None = None,
    facts: bool = False,
    graph: bool = False,
    topics: bool = False,
) -> LocomoReport:
    """Ingest, search every question, score; print tables and optionally write JSON.

    `conversations` and `questions` (per conversation) limit the run for quick checks.
    `graph`: add the graph stage (`memosys.operation.graph_search`) to the pipeline;
    `topics`: add the topic stage (`memosys.operation.topics`). With either, the pipeline
    without each of them is measured too, on the same ingestion (`LocomoReport.variants`)."""
    out = out or Console()
    convs = load_selection(data, conversations, questions)
    config = config or RetrievalConfig()
    with tempfile.TemporaryDirectory(prefix="memosys-locomo-") as home, MemOS(
        Settings.load(home), embedder=embedder
    ) as mos:
        mos.retriever.config = config
        if graph:
            from memosys.operation.graph_search import GraphStage

            mos.retriever.insert_stage(GraphStage(mos.vault))
        if topics:
            from memosys.operation.topics import TopicStage

            mos.retriever.insert_stage(TopicStage(mos.vault))
        extra = [name for name, on in (("graph", graph), ("topics", topics)) if on]
        cube_ids: dict[str, str] = {}
        turns = sum(len(c.turns) for c in convs)
        with _progress(out, "ingesting turns", turns) as advance:
            start = time.perf_counter()
            for conv in convs:
                ingest(mos, conv.sample_id, conv, progress=advance, facts=facts)
                cube_ids[conv.sample_id] = mos.get_cube(conv.sample_id).id
            ingest_s = time.perf_counter() - start
        rate = turns / ingest_s if ingest_s > 0 else 0.0
        out.print(f"ingested {turns} turns of {len(convs)} conversations in {ingest_s:.1f} s "
                  f"({rate:.1f} turns/s, embedding included)")
        for cube_id in cube_ids.values():  # build this process's indexes before timing
            mos.search("warm up", [cube_id], top_k=1, record_access=False)

        # Every method answers each question in turn (interleaved), so that a change in
        # machine load between methods cannot favour one of them; each embeds its query
        # afresh, as a new question would.
        pipeline = pipeline_searcher(mos)
        methods: dict[str, tuple[Searcher, RetrievalConfig | None]] = {
            "pipeline": (pipeline, config),
            "bm25": (bm25_searcher(mos), None),
            "dense": (dense_searcher(mos), None),
        }
        dropped = {f"without {name}": (name,) for name in extra}
        if len(extra) > 1:
            dropped["without " + " and ".join(extra)] = tuple(extra)
        for name, stages in dropped.items():
            methods[name] = (_without_stages(mos, pipeline, stages), config)
        variants = ablation_configs(config) if ablation else {}
        for name, cfg in variants.items():
            if cfg != config:
                methods[name] = (pipeline, cfg)
        results = {name: RunResult() for name in methods}
        total = sum(len(c.questions) for c in convs)
        with _progress(out, f"searching ({len(methods)} methods)", total) as advance:
            for conv in convs:
                for question in conv.questions:
                    for name, (searcher, cfg) in methods.items():
                        if cfg is not None:
                            mos.retriever.config = cfg
                        _forget_embedded_queries(mos)
                        evaluate(searcher, mos.vault.get_many, cube_ids[conv.sample_id],
                                 [question], results[name])
                    advance(1)
        mos.retriever.config = config
        main = results["pipeline"]
        baselines = {"bm25": results["bm25"].overall(), "dense": results["dense"].overall()}
        ablation_rows: dict[str, dict[str, float]] | None = None
        if ablation:
            ablation_rows = {name: results.get(name, main).overall()
                             for name in variants}
        stage_rows = {name: {"all": results[name].overall(), **results[name].by_category()}
                      for name in dropped} or None
    report = LocomoReport(main.overall(), main.by_category(), baselines, ablation_rows,
                          round(rate, 1), turns, stage_rows)
    _print_report(report, out)
    if json_file is not None:
        Path(json_file).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _without_stages(mos: MemOS, searcher: Searcher, names: tuple[str, ...]) -> Searcher:
    """The searcher with the named pipeline stages taken out for the call."""
    def search(query: str, cube_id: str) -> list[MemoryItem]:
        stages = mos.retriever.stages
        mos.retriever.stages = [s for s in stages if s.name not in names]
        try:
            return searcher(query, cube_id)
        finally:
            mos.retriever.stages = stages

    return search


def _forget_embedded_queries(mos: MemOS) -> None:
    """Drop the runtime's memo of embedded texts, so that every method measured pays for
    embedding its queries, as a new question would (not only the first method run)."""
    mos.embedder.clear()


class _progress:
    """A transient rich progress bar; yields advance(n)."""

    def __init__(self, out: Console, label: str, total: int) -> None:
        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=out,
                             transient=True)
        self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> Callable[[int], None]:
        self._bar.__enter__()
        return lambda n: self._bar.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)


def _metric_table(title: str, first: str, rows: list[tuple[str, dict[str, float]]]) -> Table:
    table = Table(title=title)
    table.add_column(first)
    for col in ("R@1", "R@5", "R@10", "R@20", "hit@10", "p50 ms", "p95 ms", "questions"):
        table.add_column(col, justify="right")
    for name, m in rows:
        table.add_row(name, *(f"{m[f'recall@{k}']:.3f}" for k in KS), f"{m['hit@10']:.3f}",
                      f"{m['search_p50_ms']:.1f}", f"{m['search_p95_ms']:.1f}",
                      str(int(m["questions"])))
    return table


def _print_report(report: LocomoReport, out: Console) -> None:
    rows = [("pipeline: all questions", report.overall)]
    rows += [(f"  {CATEGORIES[int(c)]} ({c})", m) for c, m in report.by_category.items()]
    rows += [("baseline: BM25 over turns", report.baselines["bm25"]),
             ("baseline: dense MiniLM over turns", report.baselines["dense"])]
    out.print(_metric_table("memosys bench locomo (evidence recall, categories 1-4)",
                            "method", rows))
    if report.ablation:
        out.print(_metric_table("ablation (overall)", "stages",
                                list(report.ablation.items())))
    for name, per in (report.variants or {}).items():
        rows = [(f"{name}: all questions", per["all"])]
        rows += [(f"  {CATEGORIES[int(c)]} ({c})", m) for c, m in per.items() if c != "all"]
        out.print(_metric_table(f"pipeline {name} (same ingestion)", "method", rows))
    out.print(f"ingestion: {report.ingest_turns_per_s:.1f} turns/s over {report.turns} turns")
