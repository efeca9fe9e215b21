"""`memosys bench graph`: how fast the graph is built and asked, at 10k and 100k memories.

Synthetic chat (deterministic): sessions of two speakers out of a few hundred, turns from
templates that name people, places, organisations, relatives and moves ("I moved to X",
"my sister Y works at Z"), and plain small talk. Per size, on the embedded SQLite vault:

- extraction cost: the LLM-free deriver alone (microseconds per memory);
- graph build rate: the memories go in without the graph (bulk commits of 1,000; tiny
  random vectors, so embedding is not measured), then `graph_rebuild` derives the whole
  graph in one transaction (memories/s) — what building costs, at any size in minutes;
- incremental cost at that size: 2,000 more memories written the way the runtime writes
  them (commits of 64) with the graph on and, into a copy of the vault, off;
- entity query p50/p95: name -> entity, its relations, the 20 newest memories that mention
  it; and 2-hop neighbours (recursive SQL, hub cut-off) p50/p95.

Timings are wall-clock on a shared machine: compare ratios within one run.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from memosys.infra.vault.base import Write
from memosys.infra.vault.sqlite import SQLiteVault
from memosys.operation.graph_extract import extract_graph
from memosys.types import CubeConfig, MemCube, MemoryItem, MemoryType, Source

_DIM = 8
_BATCH = 64
_BULK = 1000
_INCREMENT = 2000
_SYLLABLES = "ka ri mo lan de su na vi to mel ca ro jo an el sa li bet tor fin da ny".split()
_ROLES = "sister brother friend husband wife boss cousin dog".split()
_EVENTS = "Festival Parade Concert Marathon Fair".split()


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


@dataclass
class _World:
    speakers: list[str]
    people: list[str]
    places: list[str]
    orgs: list[str]
    events: list[str]


def _world(rng: random.Random, scale: int) -> _World:
    def unique(make: Any, n: int) -> list[str]:
        out: dict[str, None] = {}
        while len(out) < n:
            out[make()] = None
        return list(out)

    return _World(
        speakers=unique(lambda: _name(rng, 3), max(20, scale // 200)),
        # two syllables give only 22**2 names: three as well, or 100k memories (2,000
        # people) could never find enough distinct names
        people=unique(lambda: _name(rng, rng.choice((2, 3))), max(50, scale // 50)),
        places=unique(lambda: f"{_name(rng, 2)} {rng.choice(['City', 'Lake', 'Bay', ''])}"
                      .strip(), max(30, scale // 300)),
        orgs=unique(lambda: f"{_name(rng, 2)} {rng.choice(['Agency', 'University', 'Inc'])}",
                    max(20, scale // 500)),
        events=unique(lambda: f"{_name(rng, 2)} {rng.choice(_EVENTS)}", max(10, scale // 1000)),
    )


def _turn(rng: random.Random, w: _World, speaker: str) -> str:
    pick = rng.random()
    person, place, org = rng.choice(w.people), rng.choice(w.places), rng.choice(w.orgs)
    role = rng.choice(_ROLES)
    if pick < 0.12:
        return f"I went to {place} with my {role} {person} last weekend, it was lovely."
    if pick < 0.22:
        return f"My {role} {person} works at {org} now and really likes it."
    if pick < 0.30:
        return f"Big news, I moved to {place} and started working at {org}."
    if pick < 0.40:
        return f"Did you see {person} at the {rng.choice(w.events)}? It was so much fun."
    if pick < 0.48:
        return f"Thanks! I love {place}, the view there is amazing."
    if pick < 0.55:
        return f"My {role} is visiting next week, I can't wait to see them."
    return rng.choice([
        "That sounds like so much fun, I really enjoyed hearing about it.",
        "How have you been lately? Anything new going on at work?",
        "I have been reading a lot and painting in the evenings.",
        "Wow, that is great news, congratulations!",
        "We should catch up more often, it has been a while.",
    ])


def synthetic_items(cube: MemCube, n: int, seed: int = 7) -> list[MemoryItem]:
    rng = random.Random(seed)
    world = _world(rng, n)
    start = datetime(2023, 1, 1, tzinfo=UTC)
    items: list[MemoryItem] = []
    session = 0
    while len(items) < n:
        session += 1
        a, b = rng.sample(world.speakers, 2)
        at = start + timedelta(days=session)
        for k in range(min(20, n - len(items))):
            speaker = a if k % 2 == 0 else b
            items.append(MemoryItem(
                cube_id=cube.id, text=f"{speaker}: {_turn(rng, world, speaker)}",
                memory_type=MemoryType.EPISODE, valid_from=at,
                metadata={"speaker": speaker},
                source=Source(session=f"s{session}", role="user")))
    return items


def _vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    vecs = rng.standard_normal((n, _DIM)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _write_rate(vault: SQLiteVault, cube: MemCube, items: list[MemoryItem],
                batch: int = _BATCH, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for start in range(0, len(items), batch):
        part = items[start : start + batch]
        vault.commit(cube.id, [Write(i, "add", None, v)
                               for i, v in zip(part, _vectors(len(part), rng), strict=True)])
    return len(items) / (time.perf_counter() - t0)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def bench_size(n: int, queries: int, root: Path) -> dict[str, float]:
    cube_cfg = CubeConfig(embedder_id="bench-random", embedding_dim=_DIM)
    row: dict[str, float] = {"memories": n}
    # 1. extraction alone
    probe = synthetic_items(MemCube(name="probe", config=cube_cfg), min(n, 5000))
    t0 = time.perf_counter()
    for item in probe:
        extract_graph(item)
    row["extract_us_per_memory"] = round((time.perf_counter() - t0) / len(probe) * 1e6, 1)
    # 2. bulk writes without the graph, then the graph built over them in one go
    items = synthetic_items(MemCube(name="bench", config=cube_cfg), n + _INCREMENT)
    path = root / f"graph-{n}.db"
    vault = SQLiteVault(path)
    vault.set_graph_deriver(None)
    cube = vault.create_cube(MemCube(id=items[0].cube_id, name="bench", config=cube_cfg))
    row["bulk_write_per_s"] = round(_write_rate(vault, cube, items[:n], _BULK), 1)
    vault.set_graph_deriver(extract_graph)
    t0 = time.perf_counter()
    stats = vault.graph_rebuild(cube.id)
    row["graph_build_per_s"] = round(n / (time.perf_counter() - t0), 1)
    row.update(entities=stats.entities, mentions=stats.mentions, relations=stats.relations)
    # 3. incremental: more memories as the runtime writes them, graph on; then the same
    # into a copy of the vault as it was, graph off
    vault.close()
    shutil.copyfile(path, root / f"graph-{n}-off.db")
    vault = SQLiteVault(path)
    vault.set_graph_deriver(extract_graph)
    extra = items[n:]
    row["write_per_s_graph_on"] = round(_write_rate(vault, cube, extra, seed=1), 1)
    off = SQLiteVault(root / f"graph-{n}-off.db")
    off.set_graph_deriver(None)
    row["write_per_s_graph_off"] = round(_write_rate(off, cube, extra, seed=1), 1)
    off.close()
    # 4. entity queries on entities that are not speakers (what people look up)
    rng = random.Random(1)
    pool = [e for e in vault.graph_entities(cube.id, limit=5000) if e.type.value != "person"
            or e.mentions < n // 50]
    names = [rng.choice(pool).name for _ in range(queries)] if pool else []
    lat, lat2 = [], []
    for name in names:
        t0 = time.perf_counter()
        entity = vault.graph_find(cube.id, [name])[name]
        vault.graph_relations(cube.id, entity.id)
        vault.graph_mentioning([entity.id], limit=20)
        lat.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        vault.graph_neighbours(cube.id, entity.id, hops=2, co_mentions=False, limit=50)
        lat2.append((time.perf_counter() - t0) * 1000)
    vault.close()
    row["entity_query_p50_ms"] = round(_pct(lat, 50), 2)
    row["entity_query_p95_ms"] = round(_pct(lat, 95), 2)
    row["neighbours2_p50_ms"] = round(_pct(lat2, 50), 2)
    row["neighbours2_p95_ms"] = round(_pct(lat2, 95), 2)
    return row


def run_graph_bench(sizes: list[int], queries: int = 200, json_file: Path | None = None,
                    out: Console | None = None) -> list[dict[str, float]]:
    out = out or Console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="memosys-graph-bench-") as root:
        for n in sizes:
            out.print(f"graph bench: {n} memories ...")
            rows.append(bench_size(n, queries, Path(root)))
            out.print(json.dumps(rows[-1]))  # each size as soon as it is measured
    table = Table(title="memosys bench graph (SQLite, synthetic chat)")
    table.add_column("metric")
    for row in rows:
        table.add_column(f"{int(row['memories'])} memories", justify="right")
    for label, key in (
            ("extraction alone (µs/memory)", "extract_us_per_memory"),
            ("bulk writes, no graph (memories/s)", "bulk_write_per_s"),
            ("graph build over them (memories/s)", "graph_build_per_s"),
            ("then writes of 64, graph off (memories/s)", "write_per_s_graph_off"),
            ("then writes of 64, graph on (memories/s)", "write_per_s_graph_on"),
            ("entities", "entities"), ("mentions", "mentions"), ("relations", "relations"),
            ("entity query p50 (ms)", "entity_query_p50_ms"),
            ("entity query p95 (ms)", "entity_query_p95_ms"),
            ("2-hop neighbours p50 (ms)", "neighbours2_p50_ms"),
            ("2-hop neighbours p95 (ms)", "neighbours2_p95_ms")):
        table.add_row(label, *(f"{row[key]:g}" for row in rows))
    out.print(table)
    out.print(f"load average at the end: {_loadavg()} (a shared machine: compare ratios)")
    if json_file is not None:
        Path(json_file).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


__all__ = ["run_graph_bench", "synthetic_items"]
