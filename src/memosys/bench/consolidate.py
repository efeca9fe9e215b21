"""`memosys bench consolidate`: does consolidation shrink LoCoMo without losing recall?

Each conversation is ingested as in `memosys bench locomo --facts` (one episode per turn,
plus the MemReader's extracted memories, `derived_from` their episodes), then every
question is searched before and after `MemOS.consolidate` of each cube. Reported: active
memories before/after, recall@10 before/after, and the consolidation run time.

Evidence rule (how memories map back to turns, `memosys.bench.locomo.hit_turns`): a turn
counts as found when its episode, or a memory whose provenance (`source.message_ids`,
`derived_from`, followed to the episodes) includes it, is retrieved. A merge survivor's
provenance is the union of the merged memories' (it holds all their words), so it finds
what they found; superseded duplicates are no longer retrieved. Synthesised profiles and
topic summaries are derived from dozens of memories, so crediting them with all those turns
would inflate recall: a synthesis finds only the turns behind the sources it *quotes word
for word* (an extractive summary carries those statements to the model; a paraphrase
finds no turn), and takes a rank like any memory.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from memosys.bench.locomo import (
    RunResult,
    Searcher,
    _progress,
    evaluate,
    ingest,
    load_selection,
    pipeline_searcher,
)
from memosys.bench.search import DEFAULT_LOCOMO
from memosys.config import Settings
from memosys.infra.vault.base import ItemFilter
from memosys.models.embed import Embedder
from memosys.operation.consolidate_plan import is_synthesised, quoted_sources
from memosys.system import MemOS
from memosys.types import MemoryItem, MemoryKind, Source


def quoted_credit(searcher: Searcher, lookup: Callable[[list[str]], dict[str, MemoryItem]],
                  ) -> Searcher:
    """The evidence rule above: a synthesised memory keeps its rank and is derived only
    from the sources whose text it holds verbatim."""

    def credited(item: MemoryItem) -> MemoryItem:
        quoted = quoted_sources(item, lookup(list(item.derived_from)))
        return item.model_copy(update={"derived_from": quoted, "source": Source()})

    def search(query: str, cube_id: str) -> list[MemoryItem]:
        return [credited(i) if is_synthesised(i) else i for i in searcher(query, cube_id)]

    return search


def _active(mos: MemOS, cube_ids: list[str]) -> int:
    return mos.vault.count(ItemFilter(cube_ids=tuple(cube_ids), kinds=(MemoryKind.PLAINTEXT,)))


def _recall(mos: MemOS, convs: list[Any], cube_ids: dict[str, str], out: Console,
            label: str) -> float:
    search = quoted_credit(pipeline_searcher(mos), mos.vault.get_many)
    result = RunResult()
    with _progress(out, label, sum(len(c.questions) for c in convs)) as advance:
        for conv in convs:
            for q in conv.questions:
                evaluate(search, mos.vault.get_many, cube_ids[conv.sample_id], [q], result)
                advance(1)
    return result.overall()["recall@10"]


def run_consolidate_bench(
    data: Path = DEFAULT_LOCOMO,
    json_file: Path | None = None,
    conversations: int | None = None,
    out: Console | None = None,
    *,
    questions: int | None = None,
    config: dict[str, Any] | None = None,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    out = out or Console()
    convs = load_selection(data, conversations, questions)
    # The semantic graph is not used by default retrieval nor by consolidation (topics
    # are): it is off here so ingestion measures what matters.
    with tempfile.TemporaryDirectory(prefix="memosys-consolidate-") as home, MemOS(
        Settings.load(home, graph=False), embedder=embedder
    ) as mos:
        cube_ids: dict[str, str] = {}
        with _progress(out, "ingesting turns + facts", sum(len(c.turns) for c in convs)) \
                as advance:
            for conv in convs:
                ingest(mos, conv.sample_id, conv, progress=advance, facts=True)
                cube_ids[conv.sample_id] = mos.get_cube(conv.sample_id).id
        ids = list(cube_ids.values())
        before = {"memories": _active(mos, ids),
                  "recall@10": _recall(mos, convs, cube_ids, out, "searching (before)")}
        start = time.perf_counter()
        counts: dict[str, int] = {}
        for cube_id in ids:
            run = mos.consolidate(cube_id, config=config)
            for key, value in run.counts().items():
                counts[key] = counts.get(key, 0) + value
        seconds = round(time.perf_counter() - start, 2)
        after = {"memories": _active(mos, ids),
                 "recall@10": _recall(mos, convs, cube_ids, out, "searching (after)")}
    report = {"before": before, "after": after, "seconds": seconds, "actions": counts,
              "questions": sum(len(c.questions) for c in convs)}
    table = Table(title="memosys bench consolidate (LoCoMo, episodes + extracted facts)")
    for col in ("", "memories", "recall@10"):
        table.add_column(col, justify="right")
    table.add_row("before", str(before["memories"]), f"{before['recall@10']:.4f}")
    table.add_row("after", str(after["memories"]), f"{after['recall@10']:.4f}")
    out.print(table)
    out.print(f"consolidation: {seconds:.2f} s over {len(ids)} cubes; actions: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if json_file is not None:
        Path(json_file).write_text(json.dumps(report, indent=2) + "\n")
    return report
