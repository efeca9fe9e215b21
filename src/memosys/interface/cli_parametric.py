"""`memosys distil`, `memosys adapters ...` and `memosys bench parametric`.

Registered on the main app by :func:`register` (one line in cli.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from memosys.interface.cli_common import HomeOpt, JsonOpt, err, guarded, out, print_json, runtime

adapters_app = typer.Typer(help="Parametric memory: LoRA adapters distilled from memories.",
                           no_args_is_help=True)


StepsOpt = Annotated[int | None, typer.Option("--steps", help="Training steps.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")]
RankOpt = Annotated[int | None, typer.Option("--rank", help="LoRA rank.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Examples per step.")]


@contextmanager
def training_bar(description: str) -> Iterator[Callable[[int, int, float], None]]:
    """A rich progress bar (on stderr) showing the step and the current loss."""
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        "loss {task.fields[loss]}", TimeElapsedColumn(), console=err, transient=True,
    ) as bar:
        task = bar.add_task(description, total=None, loss="-")

        def update(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=f"{loss:.3f}")

        yield update


def train_config(steps: int | None, lr: float | None, rank: int | None,
                 batch_size: int | None) -> Any:
    from memosys.memories.parametric_train import TrainConfig

    knobs = {"steps": steps, "learning_rate": lr, "rank": rank, "batch_size": batch_size}
    cfg = {k: v for k, v in knobs.items() if v is not None}
    if "rank" in cfg:
        cfg["alpha"] = 2.0 * cfg["rank"]  # keep alpha/r (the effective scale) fixed
    return TrainConfig(**cfg)


def distil(
    cube: Annotated[str, typer.Argument(help="Cube name or id.")],
    memory: Annotated[list[str] | None, typer.Option("--memory", "-m",
                      help="A memory id to distil (repeat); default: the cube's active "
                      "facts, preferences, rules and persona memories.")] = None,
    name: Annotated[str | None, typer.Option(help="Adapter name.")] = None,
    method: Annotated[str, typer.Option(help="template | context (context distillation: "
                                        "answers of the model with the memory in context)")]
    = "template",
    min_uses: Annotated[int, typer.Option("--min-uses", help="Only memories used in at least "
                                          "N answers (default selection only).")] = 0,
    move: Annotated[bool, typer.Option(help="Archive the sources: the memory then lives in "
                                       "the adapter only, until retired.")] = False,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval",
                                           help="Probe recall before and after.")] = True,
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="Give the adapter a gate "
                                       "(it then takes part only in requests about what it "
                                       "holds); --no-gate: in every request.")] = True,
    steps: StepsOpt = None, lr: LrOpt = None, rank: RankOpt = None, batch_size: BatchOpt = None,
    home: HomeOpt = None, as_json: JsonOpt = False,
) -> None:
    """Distil memories into a LoRA adapter (Ctrl-C stops; running it again resumes)."""
    with runtime(home) as mos, training_bar("training") as bar:
        record = mos.parametric.distil(
            cube, memory, name=name, method=method,  # type: ignore[arg-type]
            config=train_config(steps, lr, rank, batch_size), move=move, evaluate=evaluate,
            min_uses=min_uses, gate=gate, progress=bar,
        )
    summary = record.summary()
    if as_json:
        print_json({**summary, "header": record.header})
        return
    ev = record.header.get("eval", {})
    out.print(f"adapter [bold]{record.id}[/bold] ({record.name}): {summary['sources']} "
              f"memories, {summary['steps']} steps, final loss {summary['final_loss']}, "
              f"recall {ev.get('recall_before')} -> {ev.get('recall_after')}, "
              f"{summary['bytes'] / 1e6:.1f} MB")


@adapters_app.command("list")
def list_adapters(
    cube: Annotated[str | None, typer.Option("--cube", "-c", help="Only this cube.")] = None,
    home: HomeOpt = None, as_json: JsonOpt = False,
) -> None:
    """Adapters with their status (ready, stale, retired, erased)."""
    with runtime(home) as mos:
        rows = [r.summary() for r in mos.parametric.records(cube)]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "status", "sources", "steps", "loss", "recall", "MB", "reason")
    for r in rows:
        table.add_row(r["id"], r["name"], r["status"], str(r["sources"]), str(r["steps"]),
                      str(r["final_loss"]), str(r["recall_after"]), f"{r['bytes'] / 1e6:.1f}",
                      r["reason"] or "")
    out.print(table)


@adapters_app.command("show")
def show_adapter(adapter_id: str, home: HomeOpt = None) -> None:
    """The adapter's header and record as JSON."""
    with runtime(home) as mos:
        record = mos.parametric.get(adapter_id)
        print_json({**record.summary(), "record": record.item.model_dump(mode="json")})


@adapters_app.command("retire")
def retire_adapter(
    adapter_id: str,
    probe: Annotated[bool, typer.Option("--probe/--no-probe",
                                        help="Record the adapter's probe answers.")] = True,
    home: HomeOpt = None, as_json: JsonOpt = False,
) -> None:
    """Parametric -> plaintext: the sources become active memories again."""
    with runtime(home) as mos:
        result = mos.parametric.retire(adapter_id, probe=probe)
    if as_json:
        print_json({"adapter": result.record.summary(), "probes": result.probes,
                     "restored": [i.id for i in result.restored]})
        return
    out.print(f"retired {adapter_id}; {len(result.restored)} memories active as plaintext, "
              f"{len(result.probes)} probe answers recorded")


@adapters_app.command("rebuild")
def rebuild_adapter(
    adapter_id: str, steps: StepsOpt = None, lr: LrOpt = None, rank: RankOpt = None,
    batch_size: BatchOpt = None, home: HomeOpt = None,
) -> None:
    """Distil a stale adapter's surviving sources again; the old one is retired."""
    with runtime(home) as mos, training_bar("rebuilding") as bar:
        fresh = mos.parametric.rebuild(
            adapter_id, config=train_config(steps, lr, rank, batch_size), progress=bar
        )
    out.print(f"rebuilt as {fresh.id}")


@adapters_app.command("ask")
def ask(
    cube: Annotated[str, typer.Argument(help="Cube whose ready adapters are attached.")],
    question: str,
    scale: Annotated[float, typer.Option(help="Adapter scale (0 = base model).")] = 1.0,
    user: Annotated[str | None, typer.Option(help="Asking user (owner checks).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Answer length limit.")] = 64,
    gated: Annotated[bool, typer.Option("--gate/--no-gate",
                     help="Let each adapter's gate decide (--no-gate: always attach; "
                          "measures the weights alone).")] = True,
    home: HomeOpt = None,
) -> None:
    """Ask the model closed-book (nothing in the prompt) with the cube's adapters."""
    with runtime(home) as mos:
        result = mos.parametric.chat([{"role": "user", "content": question}], cube_ids=cube,
                                     user=user, scale=scale, max_new_tokens=max_tokens,
                                     gated=gated)
    out.print(result.text)


def bench_parametric(
    facts: Annotated[int, typer.Option("--facts", help="Invented facts to distil.")] = 20,
    replay: Annotated[int | None, typer.Option("--replay", help="Replay prompts (default: all).")]
    = None,
    decoys: Annotated[int | None, typer.Option("--decoys", help="Decoy questions per fact "
                      "(default: the distillation default).")] = None,
    steps: StepsOpt = None, lr: LrOpt = None, rank: RankOpt = None, batch_size: BatchOpt = None,
    knob: Annotated[list[str] | None, typer.Option("--set", help="Any TrainConfig knob, "
                    "KEY=VALUE (repeat), e.g. null_space=0.99 or "
                    "target_modules=gate_proj,up_proj,down_proj.")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Closed-book recall of distilled facts before/after, and forgetting."""
    from dataclasses import replace

    from memosys.bench.parametric import run_parametric_bench

    with guarded():
        config = replace(train_config(steps, lr, rank, batch_size), **knobs(knob or []))
        run_parametric_bench(facts, config, json_file, out, training_bar, replay=replay,
                             decoys=decoys)


def knobs(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as TrainConfig keyword arguments (typed from the defaults)."""
    from dataclasses import fields

    from memosys.errors import ValidationError
    from memosys.memories.parametric_train import TrainConfig

    known = {f.name: f.default for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValidationError(f"--set wants KEY=VALUE with KEY one of {sorted(known)}, "
                                  f"got {pair!r}")
        default = known[key]
        try:
            if value.lower() == "none":
                out[key] = None
            elif isinstance(default, tuple):
                out[key] = tuple(v.strip() for v in value.split(",") if v.strip())
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = int(value)
        except ValueError:
            raise ValidationError(f"--set {key}: bad value {value!r}") from None
    return out


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("distil")(distil)
    app.add_typer(adapters_app, name="adapters")
    bench_app.command("parametric")(bench_parametric)
