"""`memosys bench serve` for a couple of seconds: no errors, no lost writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from live_server import LiveServer
from memosys.config import Settings
from memosys.interface.cli import app
from memosys.interface.server import create_app
from memosys.system import MemOS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[str]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("bench")), embedder=embedder)
    with LiveServer(create_app(mos)) as url:
        yield url
    mos.close()


def test_bench_serve_counts_every_acknowledged_write(server: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "serve", "--url", server, "--duration", "2", "--clients", "4",
        "--seed-memories", "20", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["lost_writes"] == 0
    assert report["ops"]["add"]["requests"] > 0 and report["ops"]["search"]["requests"] > 0
    assert report["stored"] == report["expected_stored"] == 20 + report["acknowledged_writes"]
    assert report["ops"]["total"]["p99_ms"] >= report["ops"]["total"]["p50_ms"] > 0
    assert "lost" in result.output and "p99 ms" in result.output
