"""`memosys bench events`: what change events cost a write, and how fast webhooks arrive.

On the embedded SQLite vault, single-memory commits (the worst case for per-commit
overhead; tiny random vectors, so embedding is not measured):

- capture: commits/s with the outbox capture and with it switched off (measurement
  only: memosys never runs without it), adds then updates;
- hanging receiver: commits/s while a webhook's receiver holds every delivery open (the
  dispatcher's workers all stuck) vs no webhook at all: a write must not notice;
- delivery latency: from a commit returning to a healthy loopback receiver getting the
  event (p50/p95), with the dispatcher's default poll interval.

Timings are wall-clock on a shared machine: compare ratios within one run.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

import memosys.infra.vault.sqlite as sqlite_vault
from memosys.config import Settings
from memosys.infra.events_delivery import DeliveryPolicy
from memosys.infra.vault.base import Write
from memosys.system import MemOS
from memosys.types import CubeConfig, MemCube, MemoryItem

_DIM = 8


class _Receiver:
    """A loopback HTTP receiver: records when each event id arrived; `hold` blocks every
    request until released."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.arrived[self.headers["X-Memosys-Event-Id"]] = time.perf_counter()
                if hold is not None:
                    hold.wait(120)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def _runtime(root: Path) -> Iterator[tuple[MemOS, MemCube]]:
    vault = sqlite_vault.SQLiteVault(root / "vault.db")
    mos = MemOS(Settings.load(root), vault=vault)
    cube = vault.create_cube(MemCube(name="bench", config=CubeConfig(
        embedder_id="bench-vectors", embedding_dim=_DIM)))
    try:
        yield mos, cube
    finally:
        mos.close()


def _vectors(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    v = rng.standard_normal((n, _DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write_rate(mos: MemOS, cube: MemCube, n: int,
                after_each: Callable[[MemoryItem], None] | None = None) -> float:
    """Commits per second: n adds, then n/2 updates, one memory per commit."""
    vecs = _vectors(n)
    items = [MemoryItem(cube_id=cube.id, text=f"memory {i}: the quick brown fox {i % 97}")
             for i in range(n)]
    start = time.perf_counter()
    for item, vec in zip(items, vecs, strict=True):
        [stored] = mos.vault.commit(cube.id, [Write(item, "add", None, vec)])
        if after_each is not None:
            after_each(stored)
    for item in items[: n // 2]:
        mos.vault.commit(cube.id, [Write(item.model_copy(update={"text": item.text + "!"}),
                                         "update", 1)])
    return (n + n // 2) / (time.perf_counter() - start)


def run_events_bench(n: int = 1000, deliveries: int = 200, json_file: Path | None = None,
                     console: Console | None = None, rounds: int = 3) -> dict[str, Any]:
    console = console or Console()
    results: dict[str, Any] = {"commits": n + n // 2}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # 1. capture cost: alternating rounds, medians (the machine is shared)
        offs, ons = [], []
        for r in range(rounds):
            with _runtime(root / f"plain{r}") as (mos, cube):
                real = sqlite_vault.record_commit
                sqlite_vault.record_commit = lambda *_a, **_k: None  # type: ignore[assignment]
                try:
                    offs.append(_write_rate(mos, cube, n))
                finally:
                    sqlite_vault.record_commit = real
            with _runtime(root / f"capture{r}") as (mos, cube):
                ons.append(_write_rate(mos, cube, n))
        off, on = statistics.median(offs), statistics.median(ons)
        results["capture"] = {"commits_per_s_off": round(off, 1),
                              "commits_per_s_on": round(on, 1), "ratio": round(on / off, 3)}
        # 2. a receiver that hangs
        hold = threading.Event()
        hanging = _Receiver(hold)
        try:
            with _runtime(root / "hang") as (mos, cube):
                mos.events.add_webhook(hanging.url)
                mos.events.start_dispatcher(DeliveryPolicy(timeout=60, workers=2))
                first = MemoryItem(cube_id=cube.id, text="the receiver hangs on this one")
                mos.vault.commit(cube.id, [Write(first, "add", None, _vectors(1)[0])])
                deadline = time.monotonic() + 30
                while not hanging.arrived and time.monotonic() < deadline:
                    time.sleep(0.02)  # measure only once the receiver holds a delivery
                stuck = _write_rate(mos, cube, n)
                held = len(hanging.arrived)
                hold.set()
        finally:
            hold.set()
            hanging.close()
        results["hanging_receiver"] = {"commits_per_s": round(stuck, 1),
                                       "ratio_to_no_webhook": round(stuck / on, 3),
                                       "requests_held_open": held}
        # 3. delivery latency to a healthy receiver
        healthy = _Receiver()
        try:
            with _runtime(root / "latency") as (mos, cube):
                mos.events.add_webhook(healthy.url, kinds=["created"])
                policy = DeliveryPolicy()
                mos.events.start_dispatcher(policy)
                vecs = _vectors(deliveries)
                sent: dict[str, float] = {}
                for i in range(deliveries):
                    item = MemoryItem(cube_id=cube.id, text=f"latency probe {i}")
                    mos.vault.commit(cube.id, [Write(item, "add", None, vecs[i])])
                    sent[item.id] = time.perf_counter()
                    time.sleep(0.01)
                ids = {e.memory_id: e.id for e in mos.events.list(limit=1000).events}
                deadline = time.monotonic() + 120
                while len(healthy.arrived) < deliveries and time.monotonic() < deadline:
                    time.sleep(0.05)
                lat = sorted((healthy.arrived[ids[m]] - t) * 1000 for m, t in sent.items()
                             if ids.get(m) in healthy.arrived)
        finally:
            healthy.close()
        results["delivery_latency_ms"] = {
            "delivered": len(lat), "of": deliveries, "poll_s": policy.poll,
            "p50": round(statistics.median(lat), 1) if lat else None,
            "p95": round(lat[int(0.95 * (len(lat) - 1))], 1) if lat else None}

    table = Table(title=f"change events: {results['commits']} single-memory commits (SQLite)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    c, h, d = results["capture"], results["hanging_receiver"], results["delivery_latency_ms"]
    table.add_row("commits/s, capture off (reference)", f"{c['commits_per_s_off']:.0f}")
    table.add_row("commits/s, capture on", f"{c['commits_per_s_on']:.0f}")
    table.add_row("capture on / off", f"{c['ratio']:.2f}")
    table.add_row("commits/s, webhook receiver hanging", f"{h['commits_per_s']:.0f}")
    table.add_row("hanging / no webhook", f"{h['ratio_to_no_webhook']:.2f}")
    table.add_row("requests held open meanwhile", str(h["requests_held_open"]))
    table.add_row(f"delivery latency p50 / p95 (poll {d['poll_s']} s)",
                  f"{d['p50']} / {d['p95']} ms ({d['delivered']}/{d['of']})")
    console.print(table)
    if json_file is not None:
        json_file.write_text(json.dumps(results, indent=2))
    return results
