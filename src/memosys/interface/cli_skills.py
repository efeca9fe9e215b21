"""`memosys skills ...`: tool and skill memory from the command line (docs/skills.md):
record a trajectory from JSON, distil skills, list, show and find them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from memosys.errors import ValidationError
from memosys.interface.cli_common import (
    CubeOpt,
    HomeOpt,
    JsonOpt,
    guarded,
    out,
    print_json,
    runtime,
)
from memosys.operation.skills import skill_view

_OPTIONS = {"outcome", "trajectory_id", "user", "agent", "session", "visibility"}
skills_app = typer.Typer(help="Tool calls, trajectories and the skills distilled from them.",
                         no_args_is_help=True)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.add_typer(skills_app, name="skills")
    bench_app.command("skills")(bench_skills)


def bench_skills(
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    home: HomeOpt = None,
) -> None:
    """Skill distillation and retrieval on 8 fixed agent task families: skills found,
    hit@1 for held-out wordings, false positives on unrelated tasks, per threshold."""
    from memosys.bench.skills import run
    from memosys.config import Settings
    from memosys.models.embed import make_embedder

    with guarded():
        settings = Settings.load(home)
        result = run(make_embedder(settings.embedder, base_url=settings.openai_base_url,
                                   api_key=settings.openai_api_key))
    out.print(f"{result.families} task families -> {result.skills} skills "
              f"({result.pure} pure); distil {result.distil_s:.2f} s, "
              f"find p50 {result.find_p50_ms:.1f} ms")
    table = Table(title="find_skills on held-out and unrelated tasks")
    for col in ("threshold", "hit@1", "miss", "false positive"):
        table.add_column(col, justify="right")
    for row in result.by_threshold:
        table.add_row(f"{row['threshold']:.2f}", f"{row['hit@1']:.0%}", f"{row['miss']:.0%}",
                      f"{row['false_positive']:.0%}")
    out.print(table)
    if json_file is not None:
        json_file.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")


def _show(view: dict[str, Any]) -> None:
    out.print(f"[bold]{view['name']}[/bold]  (v{view['version']}, {view['state']}, "
              f"{view['support']} runs, {view['failures']} failed)  {view['id']}")
    if view["when"]:
        out.print(f"when: {view['when']}")
    table = Table(title="steps")
    for col in ("#", "tool", "typical arguments", "varying", "support"):
        table.add_column(col, overflow="fold")
    for n, step in enumerate(view["steps"], 1):
        table.add_row(str(n), step["tool"], json.dumps(step["arguments"], ensure_ascii=False),
                      json.dumps(step["varying"], ensure_ascii=False), str(step["support"]))
    out.print(table)
    for pitfall in view["pitfalls"]:
        out.print(f"pitfall (x{pitfall['count']}): {pitfall['message']}")
    out.print(f"derived from: {', '.join(view['derived_from']) or '-'}")


@skills_app.command("record")
def record(
    file: Annotated[Path, typer.Argument(help="JSON: {task, success, steps: [{tool, "
                                         "arguments, result, success, duration_ms}], "
                                         "outcome?, trajectory_id?} or a list of them.")],
    cube: CubeOpt = "default",
    no_distil: Annotated[bool, typer.Option("--no-distil",
                                            help="Do not queue skill distillation.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record agent trajectories from a JSON file."""
    with runtime(home) as mos:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValidationError(f"{file}: not a readable JSON file: {exc}") from None
        runs = data if isinstance(data, list) else [data]
        mos.get_cube(cube, need="write")
        stored = []
        for n, run in enumerate(runs):
            if not isinstance(run, dict):
                raise ValidationError(f"trajectory {n} must be an object")
            options = {k: v for k, v in run.items() if k not in ("task", "steps", "success")}
            if unknown := set(options) - _OPTIONS:
                raise ValidationError(f"trajectory {n}: unknown fields {sorted(unknown)}")
            stored.append(mos.record_trajectory(
                cube, run.get("task"), run.get("steps"), run.get("success", True),
                distil=False, **options))  # one distillation at the end, below
        if not no_distil and any(i.metadata["trajectory"]["success"] for i in stored):
            from memosys.operation.skills_jobs import queue_distil

            queue_distil(mos, stored[0].cube_id)
    if as_json:
        print_json([i.model_dump(mode="json") for i in stored])
    else:
        out.print(f"recorded {len(stored)} trajector{'y' if len(stored) == 1 else 'ies'}")


@skills_app.command("distil")
def distil(
    cube: CubeOpt = "default",
    min_support: Annotated[int, typer.Option(help="Similar successful runs needed.")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the plan.")] = False,
    use_model: Annotated[bool, typer.Option(
        "--model", help="Word names and 'when' with the configured model.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Distil similar successful trajectories into skills (idempotent)."""
    with runtime(home) as mos:
        report = mos.distil_skills(cube, min_support=min_support, dry_run=dry_run,
                                   use_model=use_model)
    if as_json:
        print_json(report.as_dict())
        return
    out.print(f"run {report.id}: {report.trajectories} trajectories "
              f"({report.successful} successful), {report.clusters} clusters"
              + (" [dry run: nothing written]" if dry_run else ""))
    table = Table()
    for col in ("action", "skill", "name", "support", "failed", "version"):
        table.add_column(col, overflow="fold")
    for s in report.skills:
        table.add_row(s["action"], s["id"] or "(new)", s["name"], str(s["support"]),
                      str(s["failures"]), str(s["version"]))
    out.print(table)


@skills_app.command("list")
def list_skills(
    cube: CubeOpt = "default",
    all_: Annotated[bool, typer.Option("--all", help="Include retired skills.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The skills of a cube, newest first."""
    with runtime(home) as mos:
        views = [skill_view(i) for i in mos.skills.list(cube, include_retired=all_)]
    if as_json:
        print_json(views)
        return
    table = Table()
    for col in ("id", "name", "steps", "support", "pitfalls", "state", "v"):
        table.add_column(col, overflow="fold")
    for v in views:
        table.add_row(v["id"], v["name"], " -> ".join(s["tool"] for s in v["steps"]),
                      str(v["support"]), str(len(v["pitfalls"])), v["state"],
                      str(v["version"]))
    out.print(table)


@skills_app.command("show")
def show(
    skill_id: Annotated[str, typer.Argument(help="Skill id.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One skill: when it applies, steps, pitfalls and the trajectories it came from."""
    with runtime(home) as mos:
        view = skill_view(mos.skills.get(skill_id))
    if as_json:
        print_json(view)
    else:
        _show(view)


@skills_app.command("find")
def find(
    task: Annotated[str, typer.Argument(help="The task to find skills for.")],
    cube: Annotated[list[str] | None, typer.Option(
        "--cube", "-c", help="Cube name or id (repeatable).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 3,
    threshold: Annotated[float | None, typer.Option(
        help="Minimum similarity (default 0.35).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Skills that apply to a task, best first (none when nothing is similar enough)."""
    with runtime(home) as mos:
        matches = mos.find_skills(cube or ["default"], task, top_k, threshold=threshold)
    if as_json:
        print_json([m.as_dict() for m in matches])
        return
    if not matches:
        out.print("no skill applies to this task")
    for m in matches:
        out.print(f"score {m.score:.3f} (closest: {m.matched!r})")
        _show(skill_view(m.item))
