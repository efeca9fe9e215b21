"""`memosys bench exchange`: how fast cubes travel as MIP archives.

A cube of N real conversation turns (the LoCoMo dev split when present, see bench/search),
a tenth of them edited once (so histories have two versions), is exported (with
embeddings), verified (every hash and record, no import), and imported into a fresh home
with the same embedder (vectors taken from the archive). Reported: archive size, seconds
and memories per second for each step, and import speed relative to adding the same
memories through `add_items` (which embeds) — a ratio that survives a loaded machine.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from memosys.bench.search import load_corpus
from memosys.config import Settings
from memosys.infra.exchange import export_cube, import_archive, read_archive
from memosys.models.embed import make_embedder
from memosys.system import MemOS
from memosys.types import MemoryItem, MemoryType


def run(n: int = 2000, embedder: str = "minilm") -> dict[str, Any]:
    texts, _ = load_corpus()
    emb = make_embedder(embedder)
    with tempfile.TemporaryDirectory(prefix="memosys-bench-exchange-") as tmp:
        root = Path(tmp)
        with MemOS(Settings.load(root / "source"), embedder=emb) as src:
            src.create_cube("bench")
            items = [MemoryItem(cube_id="-", text=f"{texts[i % len(texts)]} (#{i})",
                                memory_type=MemoryType.EPISODE) for i in range(n)]
            started = time.perf_counter()
            stored = src.add_items("bench", items)
            add_s = time.perf_counter() - started
            for item in stored[:: 10]:
                src.update(item.id, tags=["edited"])
            started = time.perf_counter()
            report = export_cube(src, "bench", root / "bench.mip")
            export_s = time.perf_counter() - started
        started = time.perf_counter()
        read_archive(root / "bench.mip")
        verify_s = time.perf_counter() - started
        with MemOS(Settings.load(root / "target"), embedder=emb) as dst:
            started = time.perf_counter()
            result = import_archive(dst, root / "bench.mip", keep_ids=True)
            import_s = time.perf_counter() - started
        size = (root / "bench.mip").stat().st_size
    return {
        "memories": report.memories, "versions": report.versions,
        "archive_bytes": size, "bytes_per_memory": round(size / max(n, 1)),
        "add_s": round(add_s, 3), "export_s": round(export_s, 3),
        "verify_s": round(verify_s, 3), "import_s": round(import_s, 3),
        "export_per_s": round(n / export_s), "verify_per_s": round(n / verify_s),
        "import_per_s": round(n / import_s),
        "import_vs_add": round(add_s / import_s, 2), "reembedded": result.reembedded,
        "embedder": emb.id,
    }


def main(n: int, embedder: str, json_path: Path | None, console: Console) -> dict[str, Any]:
    result = run(n, embedder)
    table = Table(title=f"cube exchange: {result['memories']} memories, "
                  f"{result['versions']} versions ({result['embedder']})")
    for col in ("step", "seconds", "memories/s"):
        table.add_column(col, justify="right")
    table.add_row("add_items (embeds)", str(result["add_s"]), str(round(n / result["add_s"])))
    table.add_row("export", str(result["export_s"]), str(result["export_per_s"]))
    table.add_row("verify", str(result["verify_s"]), str(result["verify_per_s"]))
    table.add_row("import", str(result["import_s"]), str(result["import_per_s"]))
    console.print(table)
    console.print(f"archive {result['archive_bytes'] / 1e6:.2f} MB "
                  f"({result['bytes_per_memory']} B/memory); import is "
                  f"{result['import_vs_add']}x faster than adding (no re-embedding)")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
    return result
