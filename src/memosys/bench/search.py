"""`memosys bench search`: insert rate and hybrid-search latency as a cube grows.

Texts are real conversation turns (the LoCoMo dev split when it is beside the repository),
repeated verbatim to reach the target size. The first pass over the corpus embeds every
text; repeats get their vectors from the runtime's embedding memo, so from the second
pass on the insert rate measures storage and indexing rather than the embedding model.
Queries are the benchmark's real questions. The cube grows in stages (1k, 10k, 100k, ...)
and each stage reports its insert rate, its search latencies through the full runtime path
(embed query, BM25, vector, fusion, fetch, access statistics) and the recall of the
serving vector index against exact search.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from memosys.config import Settings
from memosys.system import MemOS
from memosys.types import MemoryItem, MemoryType, new_id

DEFAULT_LOCOMO = Path(__file__).resolve().parents[3].parent / "shared/data/locomo_dev.json"

_FALLBACK_SUBJECTS = ["Alice", "Bob", "my sister", "the team", "our neighbour", "Dr. Chen"]
_FALLBACK_VERBS = ["visited", "painted", "booked", "cancelled", "recommended", "repaired"]
_FALLBACK_OBJECTS = ["the museum", "a blue bicycle", "a flight to Oslo", "the garden shed",
                     "a vegetarian restaurant", "the kitchen sink", "a climbing course"]


def load_corpus(path: Path = DEFAULT_LOCOMO) -> tuple[list[str], list[str]]:
    """(turn texts, questions) from LoCoMo, or generated sentences if it is absent."""
    if path.exists():
        data = json.loads(path.read_text())
        turns: list[str] = []
        questions: list[str] = []
        for sample in data:
            conv = sample["conversation"]
            for key, session in conv.items():
                if key.startswith("session_") and isinstance(session, list):
                    turns.extend(f"{t['speaker']}: {t['text']}" for t in session)
            questions.extend(q["question"] for q in sample["qa"])
        return turns, questions
    rng = np.random.default_rng(0)
    sentences = [f"{s} {v} {o}" for s in _FALLBACK_SUBJECTS for v in _FALLBACK_VERBS
                 for o in _FALLBACK_OBJECTS]
    rng.shuffle(sentences)
    questions = [f"who {v} {o}?" for v in _FALLBACK_VERBS for o in _FALLBACK_OBJECTS]
    return sentences, questions


def _texts(turns: list[str]) -> Iterator[tuple[str, int]]:
    copy = 0
    while True:
        for turn in turns:
            yield turn, copy
        copy += 1


def _vector_recall(mos: MemOS, cube_id: str, questions: list[str]) -> dict[str, float]:
    """Share of the true top-10 that the serving index returns. Repeated texts tie exactly,
    so a hit counts when it scores at least the exact 10th score (any tied copy is right)."""
    index = mos.vault.vector_index(cube_id) if hasattr(mos.vault, "vector_index") else None
    if index is None:
        return {"ann": 0, "vector_recall@10": 1.0}
    found = 0
    for q in mos.embedder.embed(questions):
        tenth = index.search(q, 10, exact=True)[-1][1]
        found += sum(score >= tenth - 1e-5 for _, score in index.search(q, 10))
    return {"ann": int(index.uses_ann), "vector_recall@10": found / (10 * len(questions))}


def _stages(n: int) -> list[int]:
    stages = [s for s in (1_000, 10_000, 100_000, 1_000_000) if s < n]
    return [*stages, n]


@contextmanager
def _runtime(backend: str, home: str, out: Console) -> Iterator[MemOS]:
    """SQLite in the temporary home; PostgreSQL at the configured database_url, else on a
    throwaway embedded server (PostgreSQL's default, durable settings)."""
    settings = Settings.load(home)
    if backend == "sqlite":
        with MemOS(replace(settings, database_url=None)) as mos:
            yield mos
        return
    from memosys.infra.vault.pg_server import EmbeddedPostgres
    from memosys.infra.vault.postgres import PostgresVault

    url = settings.database_url or ""
    with ExitStack() as stack:
        if not url.startswith(("postgresql://", "postgres://")):
            url = stack.enter_context(EmbeddedPostgres()).create_database("bench")
            out.print("PostgreSQL: a throwaway embedded server (PostgreSQL 18, pgvector)")
        vault = PostgresVault(url, ann_threshold=settings.ann_threshold)
        yield stack.enter_context(MemOS(settings, vault=vault))


def run_search_bench(
    n: int, queries: int, json_file: Path | None, out: Console, data: Path = DEFAULT_LOCOMO,
    backend: str = "sqlite",
) -> list[dict[str, float]]:
    turns, questions = load_corpus(data)
    source = _texts(turns)
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="memosys-bench-") as home, _runtime(
        backend, home, out
    ) as mos:
        name = "bench" if backend == "sqlite" else f"bench-{new_id()[-12:]}"
        cube = mos.create_cube(name)
        out.print(f"corpus: {len(turns)} turns, {len(questions)} questions "
                  f"({'LoCoMo dev' if data.exists() else 'generated'}); "
                  f"ANN threshold {mos.settings.ann_threshold}")
        size = 0
        for target in _stages(n):
            batch = [MemoryItem(cube_id=cube.id, text=text, memory_type=MemoryType.EPISODE,
                                metadata={"copy": copy})
                     for text, copy in islice(source, target - size)]
            start = time.perf_counter()
            mos.add_items(name, batch)
            insert_s = time.perf_counter() - start
            size = target
            mos.search("warm up", name)  # first search builds this process's index
            latencies = []
            for q in questions[:queries]:
                t0 = time.perf_counter()
                mos.search(q, name, top_k=10)
                latencies.append((time.perf_counter() - t0) * 1000)
            row = {
                "n": target,
                "insert_per_s": round(len(batch) / insert_s, 1),
                "search_p50_ms": round(float(np.percentile(latencies, 50)), 2),
                "search_p95_ms": round(float(np.percentile(latencies, 95)), 2),
                **_vector_recall(mos, cube.id, questions[:queries]),
            }
            rows.append(row)
            out.print(f"  {target:>8} items: {row}")
    table = Table(title=f"memosys bench search on {backend} (hybrid BM25 + vector, top_k=10)")
    for col in ("items", "insert/s", "search p50 ms", "search p95 ms",
                "vector index", "vector recall@10 vs exact"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{int(r['n']):,}", f"{r['insert_per_s']:.0f}",
                      f"{r['search_p50_ms']:.1f}", f"{r['search_p95_ms']:.1f}",
                      "HNSW" if r["ann"] else "exact", f"{r['vector_recall@10']:.3f}")
    out.print(table)
    if json_file is not None:
        json_file.write_text(json.dumps({"rows": rows}, indent=2))
    return rows
