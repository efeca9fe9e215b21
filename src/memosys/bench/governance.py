"""`memosys bench governance`: what permission checks and the audit log cost per call.

On one SQLite cube: median search latency as the local admin with the audit append, as the
admin with auditing switched off (the baseline), and as a keyed user reading through a
share (grant lookups, key re-check, visibility filter); plus `authenticate`. Query
embeddings are memoized first so the numbers are storage and checks, not the model.
Ratios to the baseline survive machine load better than the milliseconds.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from memosys.config import Settings
from memosys.system import MemOS


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def run_governance_bench(n: int, queries: int, json_file: Path | None, out: Console) -> None:
    with tempfile.TemporaryDirectory() as home:
        mos = MemOS(Settings.load(home))
        try:
            results = _measure(mos, n, queries)
        finally:
            mos.close()
    table = Table(title=f"governance overhead ({n} memories, {queries} queries x 3)")
    for col in ("case", "median ms", "x baseline"):
        table.add_column(col)
    base = results["search_no_audit_ms"]
    for label, key in (("search, admin, no audit (baseline)", "search_no_audit_ms"),
                       ("search, admin, audited", "search_admin_ms"),
                       ("search, keyed user via share, audited", "search_user_ms"),
                       ("authenticate", "authenticate_ms")):
        value = results[key]
        ratio = f"{value / base:.2f}" if key.startswith("search") else ""
        table.add_row(label, f"{value:.2f}", ratio)
    out.print(table)
    if json_file is not None:
        json_file.write_text(json.dumps(results, indent=2))


def _measure(mos: MemOS, n: int, queries: int) -> dict[str, Any]:
    mos.create_user("owner", role="owner")
    mos.create_user("guest", role="member")
    owner = mos.as_actor(mos.authenticate(mos.create_api_key("owner")[1]))
    _, guest_key = mos.create_api_key("guest")
    guest = mos.as_actor(mos.authenticate(guest_key))
    owner.create_cube("bench")
    owner.share_cube("bench", "guest", ["read"])
    owner.add_items("bench", [_item(mos, i) for i in range(n)])
    texts = [f"topic {k % 17} meeting notes" for k in range(queries)]
    mos.embedder.embed(texts)  # memoized from here on

    def searches(view: MemOS) -> Callable[[], object]:
        state = {"i": 0}

        def call() -> object:
            state["i"] += 1
            return view.search(texts[state["i"] % len(texts)], ["bench"], top_k=10)

        return call

    repeats = 3 * queries
    admin_ms = _median_ms(searches(mos), repeats)
    user_ms = _median_ms(searches(guest), repeats)
    original = MemOS._audit
    MemOS._audit = lambda self, *a, **k: None  # type: ignore[method-assign]
    try:
        no_audit_ms = _median_ms(searches(mos), repeats)
    finally:
        MemOS._audit = original  # type: ignore[method-assign]
    auth_ms = _median_ms(lambda: mos.authenticate(guest_key), repeats)
    return {"memories": n, "queries": queries, "search_no_audit_ms": no_audit_ms,
            "search_admin_ms": admin_ms, "search_user_ms": user_ms,
            "authenticate_ms": auth_ms}


def _item(mos: MemOS, i: int) -> Any:
    from memosys.types import MemoryItem

    cube = mos.vault.get_cube("bench")
    return MemoryItem(cube_id=cube.id, text=f"note {i}: the meeting about topic {i % 17} "
                      f"is on day {i % 31}", owner="owner")
