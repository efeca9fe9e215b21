"""`memosys consolidate CUBE [--dry-run]`, `memosys consolidate rollback RUN`,
`memosys consolidate show RUN` and `memosys bench consolidate` (docs/consolidation.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from memosys.errors import ValidationError
from memosys.interface.cli_common import HomeOpt, JsonOpt, guarded, out, print_json, runtime

_VERBS = ("rollback", "show")


def consolidate_command(
    target: Annotated[str, typer.Argument(
        help="Cube name or id to consolidate; or `rollback RUN` / `show RUN`.")],
    run_id: Annotated[str | None, typer.Argument(help="The run id (after rollback/show).")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change "
                                          "nothing.")] = False,
    background: Annotated[bool, typer.Option("--background", help="Queue the run for the "
                                             "scheduler's worker instead of waiting.")]
    = False,
    merge_cosine: Annotated[float | None, typer.Option(
        "--merge-cosine", help="Embedding similarity from which memories may merge.")] = None,
    synthesis: Annotated[str | None, typer.Option(
        "--synthesis", help="extractive (no model) or llm (the bound model).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Merge near-duplicates, synthesise profiles and topic summaries, queue contradictions
    for review; every run has an id and can be rolled back as one unit."""
    config: dict[str, Any] = {}
    if merge_cosine is not None:
        config["merge_cosine"] = merge_cosine
    if synthesis is not None:
        config["synthesis"] = synthesis
    with runtime(home) as mos:
        if target in _VERBS:
            if not run_id:
                raise ValidationError(f"`memosys consolidate {target}` needs a run id")
            run = (mos.rollback_consolidation(run_id) if target == "rollback"
                   else mos.consolidation_run(run_id))
        else:
            if run_id is not None:
                raise ValidationError(f"unexpected argument {run_id!r}")
            run = mos.consolidate(target, dry_run=dry_run, config=config, wait=not background)
    if as_json:
        print_json(run.as_dict())
        return
    title = f"consolidation run {run.id} ({run.state}{', dry run' if run.dry_run else ''})"
    table = Table(title=title)
    for col in ("action", "memories", "subject", "reason"):
        table.add_column(col)
    for action in run.plan:
        table.add_row(action.kind, ", ".join(i[-8:] for i in action.item_ids[:4]) +
                      (f" +{len(action.item_ids) - 4}" if len(action.item_ids) > 4 else ""),
                      action.subject or "", action.reason)
    out.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in run.counts().items() if v)
    changed = len(run.rollback_changes if run.state == "rolled_back" else run.changes)
    out.print(f"{counts or 'nothing to do'}; {changed} memories written; "
              f"{len(run.reviews)} review entries; {run.seconds:.2f} s")


def bench_consolidate(
    data: Annotated[Path | None, typer.Option("--data", help="LoCoMo JSON file.")] = None,
    conversations: Annotated[int | None, typer.Option(
        "--conversations", help="Only the first N conversations.")] = None,
    questions: Annotated[int | None, typer.Option(
        "--questions", help="Only the first N questions per conversation.")] = None,
    merge_cosine: Annotated[float | None, typer.Option("--merge-cosine")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")]
    = None,
) -> None:
    """Memories and recall@10 before/after consolidating LoCoMo (episodes plus facts)."""
    from memosys.bench.consolidate import run_consolidate_bench
    from memosys.bench.search import DEFAULT_LOCOMO

    config = {"merge_cosine": merge_cosine} if merge_cosine is not None else {}
    with guarded():
        run_consolidate_bench(data or DEFAULT_LOCOMO, json_file, conversations, out,
                              questions=questions, config=config)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("consolidate")(consolidate_command)
    bench_app.command("consolidate")(bench_consolidate)
