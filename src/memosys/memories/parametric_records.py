"""Records of parametric memory: the adapter record, its statuses and small helpers.

See :mod:`memosys.memories.parametric` for the lifecycle and docs/parametric.md for the
formats."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memosys.infra.vault.base import Write
from memosys.types import MemoryItem, MemoryState

ADAPTER_TAG = "memosys:adapter"
HEADER_KEY = "memosys_adapter"
FORMAT = 1
READY, STALE, RETIRED, ERASED = "ready", "stale", "retired", "erased"


@dataclass(frozen=True)
class AdapterRecord:
    """An adapter as the cube records it (the item) plus its header and serving status."""

    item: MemoryItem
    path: Path

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.item.metadata.get("adapter") or {})

    @property
    def header(self) -> dict[str, Any]:
        return dict(self.meta.get("header") or {})

    @property
    def status(self) -> str:
        return str(self.meta.get("status", READY))

    @property
    def reason(self) -> str | None:
        return self.meta.get("reason")

    @property
    def name(self) -> str:
        return str(self.header.get("name", self.id))

    @property
    def cube_id(self) -> str:
        return self.item.cube_id

    @property
    def sources(self) -> list[dict[str, Any]]:
        return list(self.header.get("sources", []))

    @property
    def bank_name(self) -> str:
        return bank_name(self.id)

    def summary(self) -> dict[str, Any]:
        h = self.header
        return {
            "id": self.id, "name": self.name, "cube_id": self.cube_id, "status": self.status,
            "reason": self.reason, "sources": len(self.sources), "method": h.get("data", {})
            .get("method"), "steps": h.get("training", {}).get("steps"),
            "final_loss": (h.get("training", {}).get("loss_curve") or [None])[-1],
            "recall_after": h.get("eval", {}).get("recall_after"),
            "bytes": self.path.stat().st_size if self.path.exists() else 0,
            "created_at": h.get("created_at"),
        }


@dataclass(frozen=True)
class RetireResult:
    record: AdapterRecord
    restored: list[MemoryItem]
    probes: list[dict[str, Any]]



def bank_name(adapter_id: str) -> str:
    return "p" + adapter_id.replace("-", "")


def state_write(item: MemoryItem, state: MemoryState, op: str) -> Write:
    return Write(item.model_copy(update={"state": state}), op, item.version, None)


def contains(answer: str, value: str) -> bool:
    return _norm(value) in _norm(answer)


def _norm(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def eval_summary(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    def rate(rows: list[dict[str, Any]]) -> float | None:
        scored = [r["hit"] for r in rows if r["hit"] is not None]
        return round(sum(scored) / len(scored), 4) if scored else None

    return {
        "recall_before": rate(before), "recall_after": rate(after),
        "probes": [{**a, "base_answer": b["answer"], "base_hit": b["hit"]}
                   for b, a in zip(before, after, strict=False)],
    }


def write_atomic(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
