"""`memosys bench serve`: load on the REST service over loopback.

Starts `memosys serve` in a subprocess on a fresh home (or drives `--url`), stores a few
seed memories, then runs `clients` concurrent clients (asyncio + httpx, one connection
each) for `duration` seconds, each request an add (with probability `write_ratio`) or a
search. Reports throughput, p50/p99 latency and errors per operation, and checks durability:
every acknowledged add must be listed by the server afterwards and the cube's count must
equal seeds + acknowledged adds ("lost writes" must be 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from memosys.errors import StorageError

_WORDS = (
    "alice bob carol tea coffee beagle paris berlin hiking piano garden novel museum train "
    "birthday meeting project deadline river mountain recipe pasta soccer violin summer "
    "winter holiday doctor bakery library cinema concert kayak sister brother office"
).split()
_HEALTH_TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_server(log: Console) -> Iterator[str]:
    """`memosys serve` on a free loopback port and a temporary home; yields its URL."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="memosys-bench-") as home:
        env = {**os.environ, "MEMOSYS_HOME": home, "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "memosys", "serve", "--port", str(port),
               "--log-level", "warning"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + _HEALTH_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise StorageError(f"server exited: {(proc.stderr.read() or '')[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise StorageError("server did not become healthy in time")
                time.sleep(0.2)
            log.print(f"server up at {url} (pid {proc.pid})")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


class _Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {"add": [], "search": []}
        self.errors: dict[str, int] = {"add": 0, "search": 0}
        self.error_samples: list[str] = []
        self.acked: set[str] = set()


async def _client_loop(index: int, url: str, headers: dict[str, str], cube: str,
                       stop_at: float, write_ratio: float, rec: _Recorder) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120.0) as http:
        n = 0
        while time.monotonic() < stop_at:
            op = "add" if rng.random() < write_ratio else "search"
            if op == "add":
                n += 1
                request = http.post(f"/api/v1/cubes/{cube}/memories", json={
                    "text": f"client {index} note {n}: {_sentence(rng, 8)}",
                    "tags": [f"client-{index}"]})
            else:
                request = http.post("/api/v1/search", json={
                    "query": _sentence(rng, 3), "cube_ids": [cube], "top_k": 10})
            start = time.perf_counter()
            try:
                resp = await request
                ok = resp.status_code == (201 if op == "add" else 200)
                detail = f"{op}: HTTP {resp.status_code} {resp.text[:200]}"
            except httpx.HTTPError as exc:
                ok, resp, detail = False, None, f"{op}: {type(exc).__name__}: {exc}"
            rec.latency[op].append(time.perf_counter() - start)
            if not ok:
                rec.errors[op] += 1
                if len(rec.error_samples) < 5:
                    rec.error_samples.append(detail)
            elif op == "add" and resp is not None:
                rec.acked.update(item["id"] for item in resp.json()["items"])


def _stored_ids(url: str, headers: dict[str, str], cube: str) -> list[str]:
    ids: list[str] = []
    offset: int | None = 0
    with httpx.Client(base_url=url, headers=headers, timeout=120.0) as http:
        while offset is not None:
            page = http.get(f"/api/v1/cubes/{cube}/memories",
                            params={"limit": 1000, "offset": offset})
            page.raise_for_status()
            body = page.json()
            ids.extend(item["id"] for item in body["items"])
            offset = body["next_offset"]
    return ids


def _drive(url: str, headers: dict[str, str], duration: float, clients: int,
           write_ratio: float, seed_memories: int) -> dict[str, Any]:
    cube = f"bench-{int(time.time())}-{random.randrange(10**6)}"
    rng = random.Random(0)
    with httpx.Client(base_url=url, headers=headers, timeout=300.0) as http:
        http.post("/api/v1/cubes", json={"name": cube}).raise_for_status()
        seeds = 0
        while seeds < seed_memories:
            batch = min(200, seed_memories - seeds)
            resp = http.post(f"/api/v1/cubes/{cube}/memories", json={
                "messages": [{"role": "user", "content": _sentence(rng, 10)}
                             for _ in range(batch)]})
            resp.raise_for_status()
            seeds += len(resp.json()["items"])
    rec = _Recorder()

    async def run_all() -> float:
        start = time.monotonic()
        await asyncio.gather(*(
            _client_loop(i, url, headers, cube, start + duration, write_ratio, rec)
            for i in range(clients)))
        return time.monotonic() - start

    elapsed = asyncio.run(run_all())
    stored = _stored_ids(url, headers, cube)
    stored_set = set(stored)
    lost = sorted(rec.acked - stored_set)
    expected = seeds + len(rec.acked)
    ops: dict[str, Any] = {}
    for op, lat in {**rec.latency, "total": rec.latency["add"] + rec.latency["search"]}.items():
        arr = np.asarray(lat) * 1000.0
        errors = sum(rec.errors.values()) if op == "total" else rec.errors[op]
        ops[op] = {
            "requests": len(lat), "errors": errors,
            "throughput_rps": len(lat) / elapsed if elapsed else 0.0,
            "p50_ms": float(np.percentile(arr, 50)) if len(arr) else None,
            "p99_ms": float(np.percentile(arr, 99)) if len(arr) else None,
        }
    return {
        "url": url, "cube": cube, "clients": clients, "duration_s": elapsed,
        "write_ratio": write_ratio, "seed_memories": seeds, "ops": ops,
        "errors": sum(rec.errors.values()), "error_samples": rec.error_samples,
        "acknowledged_writes": len(rec.acked), "stored": len(stored),
        "expected_stored": expected, "lost_writes": len(lost),
        "unexpected_stored": len(stored_set) - len(stored_set & rec.acked) - seeds,
        "cpu_count": os.cpu_count(), "load_avg": list(os.getloadavg()),
    }


def run_serve_bench(*, duration: float, clients: int, write_ratio: float,
                    seed_memories: int, url: str | None, api_key: str | None,
                    json_file: Path | None, console: Console) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if url is None:
        with local_server(console) as local:
            report = _drive(local, headers, duration, clients, write_ratio, seed_memories)
    else:
        report = _drive(url.rstrip("/"), headers, duration, clients, write_ratio,
                        seed_memories)
    _print(report, console)
    if json_file is not None:
        json_file.write_text(json.dumps(report, indent=2))
    return report


def _print(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"memosys bench serve: {report['clients']} clients, "
                  f"{report['duration_s']:.1f} s, write ratio {report['write_ratio']}")
    for col in ("op", "requests", "req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(col, justify="right")
    for op, row in report["ops"].items():
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        table.add_row(op, str(row["requests"]), f"{row['throughput_rps']:.1f}",
                      ms(row["p50_ms"]), ms(row["p99_ms"]), str(row["errors"]))
    console.print(table)
    console.print(
        f"writes: {report['acknowledged_writes']} acknowledged + {report['seed_memories']} "
        f"seeds = {report['expected_stored']} expected, {report['stored']} stored, "
        f"[bold]{report['lost_writes']} lost[/bold]; load average "
        f"{', '.join(f'{x:.2f}' for x in report['load_avg'])} on {report['cpu_count']} CPUs")
    for sample in report["error_samples"]:
        console.print(f"[yellow]error sample[/yellow]: {sample}")
