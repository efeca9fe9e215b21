"""`memosys bench reader`: extraction precision/recall on a small labelled message set.

Each line of the set (default `tests/data/reader_labelled.jsonl`) is one message with its
session time, speaker and the memories a careful person would extract from it:
`{"type", "keywords", "date"?, "alt_types"?, "optional"?}`. A predicted memory *matches* an
expected one when

* its type is the expected type (or one of `alt_types`, for genuinely ambiguous cases),
* at least two thirds (rounded up) of the keywords occur in its text — a keyword occurs when
  it appears case-insensitively at the start of a word ("lov" matches "loves"), and
* when a `date` is given (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`), its event time (`valid_from`)
  falls in that year / month / day.

Matching is one-to-one and greedy per message. Precision = matched predictions / all
predictions; recall = matched required expectations / all required expectations. An
`optional` expectation is not counted in recall, and a prediction matching it is neither a
hit nor a false positive (it is left out of precision).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from memosys.errors import ValidationError
from memosys.interface.extract import Candidate, Extractor, Turn

DEFAULT_SET = Path(__file__).resolve().parents[3] / "tests" / "data" / "reader_labelled.jsonl"


@dataclass
class LabelledMessage:
    id: str
    turn: Turn
    expected: list[dict[str, Any]]
    split: str = "dev"


def load_set(path: Path | str | None = None) -> list[LabelledMessage]:
    where = Path(path) if path else DEFAULT_SET
    if not where.exists():
        raise ValidationError(f"labelled set not found: {where}")
    rows: list[LabelledMessage] = []
    for n, line in enumerate(where.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            turn = Turn(
                text=row["text"], speaker=row.get("speaker"), role=row.get("role", "user"),
                timestamp=datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")),
                episode_id=row["id"], session=row.get("session"),
            )
            rows.append(LabelledMessage(row["id"], turn, list(row.get("expected", [])),
                                        row.get("split", "dev")))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValidationError(f"{where}:{n}: bad row: {exc}") from None
    return rows


def keyword_hits(text: str, keywords: list[str]) -> int:
    low = text.lower()
    return sum(1 for k in keywords if re.search(r"(?<![a-z0-9])" + re.escape(k.lower()), low))


def date_ok(pred: Candidate, date: str | None) -> bool:
    if not date:
        return True
    if pred.valid_from is None:
        return False
    return pred.valid_from.date().isoformat().startswith(date)


def matches(pred: Candidate, exp: dict[str, Any]) -> bool:
    types = {exp["type"], *exp.get("alt_types", [])}
    if pred.memory_type.value not in types:
        return False
    keywords = exp["keywords"]
    need = math.ceil(2 * len(keywords) / 3)
    return keyword_hits(pred.text, keywords) >= need and date_ok(pred, exp.get("date"))


@dataclass
class BenchResult:
    backend: str
    precision: float
    recall: float
    messages: int
    predicted: int
    expected: int
    true_positives: int
    seconds: float
    errors: int
    per_type: dict[str, dict[str, int]] = field(default_factory=dict)
    splits: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "precision": round(self.precision, 4),
            "recall": round(self.recall, 4), "f1": round(self.f1, 4),
            "messages": self.messages, "predicted": self.predicted,
            "expected": self.expected, "true_positives": self.true_positives,
            "errors": self.errors, "seconds": round(self.seconds, 2),
            "seconds_per_message": round(self.seconds / max(self.messages, 1), 3),
            "per_type": self.per_type, "splits": self.splits, "rows": self.rows,
        }


def score(extractor: Extractor, data: list[LabelledMessage], progress: Any = None) -> BenchResult:
    tp = predicted = expected_n = errors = 0
    per_type: dict[str, Counter[str]] = {}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, msg in enumerate(data, 1):
        out = extractor.extract([msg.turn])
        errors += len(out.errors)
        preds = out.candidates
        required = [e for e in msg.expected if not e.get("optional")]
        expected_n += len(required)
        used: set[int] = set()
        hits = 0
        counted_preds = 0
        for pred in preds:
            match = next((j for j, e in enumerate(msg.expected)
                          if j not in used and matches(pred, e)), None)
            kind = per_type.setdefault(pred.memory_type.value, Counter())
            if match is None:
                counted_preds += 1
                kind["fp"] += 1
                continue
            used.add(match)
            if msg.expected[match].get("optional"):
                continue
            counted_preds += 1
            hits += 1
            kind["tp"] += 1
        for j, e in enumerate(msg.expected):
            if not e.get("optional") and j not in used:
                per_type.setdefault(e["type"], Counter())["fn"] += 1
        tp += hits
        predicted += counted_preds
        rows.append({
            "id": msg.id, "split": msg.split, "text": msg.turn.text,
            "tp": hits, "counted": counted_preds, "required": len(required),
            "predicted": [{"type": p.memory_type.value, "text": p.text,
                           "valid_from": p.valid_from.isoformat() if p.valid_from else None}
                          for p in preds],
            "expected": msg.expected, "matched": hits, "errors": out.errors,
        })
        if progress:
            progress(i, len(data))
    seconds = time.perf_counter() - started
    splits: dict[str, dict[str, float]] = {}
    for name in sorted({r["split"] for r in rows}):
        part = [r for r in rows if r["split"] == name]
        s_tp = sum(r["tp"] for r in part)
        s_pred = sum(r["counted"] for r in part)
        s_exp = sum(r["required"] for r in part)
        splits[name] = {"messages": len(part),
                        "precision": round(s_tp / s_pred, 4) if s_pred else 0.0,
                        "recall": round(s_tp / s_exp, 4) if s_exp else 0.0}
    return BenchResult(
        backend=getattr(extractor, "backend", extractor.name),
        precision=tp / predicted if predicted else 0.0,
        recall=tp / expected_n if expected_n else 0.0,
        messages=len(data), predicted=predicted, expected=expected_n, true_positives=tp,
        seconds=seconds, errors=errors,
        per_type={k: dict(v) for k, v in sorted(per_type.items())}, splits=splits, rows=rows,
    )


def run_reader_bench(
    extractor: Extractor,
    console: Console,
    *,
    data_path: Path | None = None,
    json_file: Path | None = None,
    limit: int | None = None,
    split: str | None = None,
    progress: Any = None,
) -> BenchResult:
    data = load_set(data_path)
    if split is not None:
        data = [m for m in data if m.split == split]
        if not data:
            raise ValidationError(f"no messages in split {split!r}")
    if limit is not None:
        data = data[:limit]
    result = score(extractor, data, progress)
    table = Table(title=f"MemReader extraction — {result.backend}")
    for col in ("split", "msgs", "pred", "exp", "hits", "P", "R", "F1", "s/msg", "errors"):
        table.add_column(col, justify="right")
    table.add_row("all", str(result.messages), str(result.predicted), str(result.expected),
                  str(result.true_positives), f"{result.precision:.3f}", f"{result.recall:.3f}",
                  f"{result.f1:.3f}", f"{result.seconds / max(result.messages, 1):.2f}",
                  str(result.errors))
    if len(result.splits) > 1:
        for name, part in result.splits.items():
            table.add_row(name, str(part["messages"]), "", "", "", f"{part['precision']:.3f}",
                          f"{part['recall']:.3f}", "", "", "")
    console.print(table)
    types = Table(title="by type")
    for col in ("type", "tp", "fp", "fn"):
        types.add_column(col, justify="right")
    for kind, c in result.per_type.items():
        types.add_row(kind, str(c.get("tp", 0)), str(c.get("fp", 0)), str(c.get("fn", 0)))
    console.print(types)
    if json_file is not None:
        json_file.write_text(json.dumps(result.as_json(), indent=2, ensure_ascii=False) + "\n")
    return result
