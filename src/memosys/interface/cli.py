"""The `memosys` command. Every command takes `--json` for output a script can parse;
exit codes: 0 ok, 2 invalid input, 3 not found, 4 conflict, 5 embedder mismatch,
6 storage error, 9 unauthenticated, 10 permission denied, 1 anything else (see
memosys.errors). With $MEMOSYS_API_KEY set, commands act as that key's user."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from memosys.errors import ValidationError
from memosys.interface.cli_activation import register as register_activation
from memosys.interface.cli_common import (
    CubeOpt,
    HomeOpt,
    JsonOpt,
    err,
    guarded,
    out,
    print_json,
    runtime,
)
from memosys.interface.cli_consolidate import register as register_consolidate
from memosys.interface.cli_db import db_app
from memosys.interface.cli_events import register as register_events
from memosys.interface.cli_exchange import register as register_exchange
from memosys.interface.cli_extraction import register as register_extraction
from memosys.interface.cli_governance import register
from memosys.interface.cli_graph import bench_graph, graph_app
from memosys.interface.cli_mcp import mcp_command
from memosys.interface.cli_parametric import register as register_parametric
from memosys.interface.cli_serve import register as register_serve
from memosys.interface.cli_skills import register as register_skills
from memosys.system import SearchFilters
from memosys.types import MemoryItem

app = typer.Typer(
    help="memosys: a memory operating system for LLM applications.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cubes_app = typer.Typer(help="List and create cubes.", no_args_is_help=True)
app.add_typer(cubes_app, name="cubes")
bench_app = typer.Typer(help="Reproducible benchmarks that print tables.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(db_app, name="db")
app.command("mcp")(mcp_command)
register_exchange(app, bench_app)
register_serve(app, bench_app)
register(app, bench_app)  # users, keys, share, acl, policy, audit, lifecycle, review, ...
register_parametric(app, bench_app)
register_activation(app, bench_app)  # chat, activation, bench ttft
register_consolidate(app, bench_app)  # consolidate, bench consolidate
app.add_typer(graph_app, name="graph")
register_extraction(app)  # extraction show|set|test
register_events(app, bench_app)  # events, webhooks, bench events
bench_app.command("graph")(bench_graph)
register_skills(app, bench_app)  # skills record|distil|list|show|find, bench skills


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, so --json output on stdout stays clean."""
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _item_json(item: MemoryItem) -> dict[str, Any]:
    return item.model_dump(mode="json")


def _items_table(items: list[MemoryItem], title: str) -> Table:
    table = Table(title=title)
    for col in ("id", "v", "type", "state", "text"):
        table.add_column(col, overflow="fold")
    for i in items:
        table.add_row(i.id, str(i.version), i.memory_type.value, i.state.value, i.text)
    return table


def _parse_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"--{name}: not an ISO date/time: {value!r}") from None


# --- cubes ------------------------------------------------------------------------------
@cubes_app.command("list")
def cubes_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List cubes."""
    with runtime(home) as mos:
        cubes = mos.list_cubes()
        if as_json:
            print_json([c.model_dump(mode="json") for c in cubes])
            return
        table = Table(title="cubes")
        for col in ("name", "id", "owner", "embedder", "clock"):
            table.add_column(col)
        for c in cubes:
            table.add_row(c.name, c.id, c.owner or "", c.config.embedder_id, str(c.clock))
        out.print(table)


@cubes_app.command("create")
def cubes_create(
    name: str,
    owner: Annotated[str | None, typer.Option(help="Owning user.")] = None,
    description: str = "",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a cube bound to the configured embedder."""
    with runtime(home) as mos:
        cube = mos.create_cube(name, owner=owner, description=description)
        if as_json:
            print_json(cube.model_dump(mode="json"))
        else:
            out.print(f"created cube [bold]{cube.name}[/bold] ({cube.id})")


# --- memories ---------------------------------------------------------------------------
@app.command()
def add(
    text: Annotated[str | None, typer.Argument(help="Text to remember; '-' reads stdin.")] = None,
    cube: CubeOpt = "default",
    memory_type: Annotated[str | None, typer.Option("--type", "-t")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Repeatable.")] = None,
    user: str | None = None,
    session: str | None = None,
    messages_file: Annotated[
        Path | None,
        typer.Option("--messages", help="JSON file: a list of {role, content, name?, "
                     "timestamp?, id?} chat messages, each kept as an episode."),
    ] = None,
    infer: Annotated[bool, typer.Option("--infer", help="Also extract memories (facts, "
                                        "preferences, events, ...) with the MemReader.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="With --infer: extract now, "
                                       "or queue a job for `memosys worker`.")] = True,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a memory (or chat messages) to a cube, creating the cube if needed."""
    with runtime(home) as mos:
        messages = None
        if messages_file is not None:
            try:
                messages = json.loads(messages_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:  # incl. JSON and UTF-8 decoding errors
                raise ValidationError(f"--messages: {exc}") from None
        elif text is None:
            raise ValidationError("give a text, '-' for stdin, or --messages FILE")
        elif text == "-":
            text = sys.stdin.read()
        mos.ensure_cube(cube, owner=user)
        with progress_bar("adding") as progress:
            items = mos.add(cube, text, messages=messages, memory_type=memory_type,
                            tags=tag or [], user=user, session=session, progress=progress,
                            infer=infer, wait=wait)
        result, job = getattr(items, "result", None), getattr(items, "job", None)
        if as_json:
            data: Any = [_item_json(i) for i in items]
            if infer:
                data = {"items": data, "extraction": result.summary() if result else None,
                        "job": _job_json(job) if job else None}
            print_json(data)
            return
        for i in items:
            out.print(f"added {i.id} ({i.memory_type.value})")
        if result is not None:
            for d in result.decisions:
                out.print(f"  {d.op:<6} {d.memory_type:<10} {d.text}  [dim]({d.reason})[/dim]")
            for e in result.errors:
                err.print(f"[yellow]warning[/yellow]: {e}")
        if job is not None:
            out.print(f"queued extraction job {job.id} (run `memosys worker`; "
                      f"`memosys job {job.id}` for its status)")


@app.command()
def search(
    query: str,
    cube: Annotated[list[str] | None, typer.Option("--cube", "-c", help="Repeatable; "
                                                   "default all cubes.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 10,
    memory_type: Annotated[list[str] | None, typer.Option("--type", "-t")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag")] = None,
    state: Annotated[list[str] | None, typer.Option("--state")] = None,
    user: str | None = None,
    session: str | None = None,
    since: Annotated[str | None, typer.Option(help="ISO date/time (event time).")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date/time (event time).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hybrid (BM25 + vector) search."""
    with runtime(home) as mos:
        filters = SearchFilters(
            memory_types=memory_type or (), tags=tag or (), states=state or ("active",),
            user=user, session=session, since=_parse_time(since, "since"),
            until=_parse_time(until, "until"),
        )
        hits = mos.search(query, cube or None, top_k, filters)
        if as_json:
            print_json([
                {"score": h.score, "ranks": h.ranks, "scores": h.scores,
                 "provenance": h.provenance, "item": _item_json(h.item)}
                for h in hits
            ])
            return
        table = Table(title=f"search: {query}")
        for col in ("score", "id", "type", "text", "source"):
            table.add_column(col, overflow="fold")
        for h in hits:
            p = h.provenance
            src = " ".join(f"{k}={v}" for k, v in p.items()
                           if v and k in ("user", "session", "document_uri"))
            table.add_row(f"{h.score:.4f}", h.item.id, h.item.memory_type.value, h.item.text, src)
        out.print(table)


@app.command()
def get(item_id: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Show one memory with its header and statistics."""
    with runtime(home) as mos:
        item = mos.get(item_id)
        if as_json:
            print_json(_item_json(item))
        else:
            out.print_json(item.model_dump_json())


@app.command()
def history(item_id: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every version of a memory, oldest first."""
    with runtime(home) as mos:
        records = mos.history(item_id)
        if as_json:
            print_json([{"version": r.item.version, "op": r.op, "clock": r.clock,
                          "at": r.at.isoformat(), "item": _item_json(r.item)} for r in records])
            return
        table = Table(title=f"history of {item_id}")
        for col in ("v", "op", "at", "state", "text"):
            table.add_column(col, overflow="fold")
        for r in records:
            table.add_row(str(r.item.version), r.op, r.at.isoformat(timespec="seconds"),
                          r.item.state.value, r.item.text)
        out.print(table)


@app.command()
def update(
    item_id: str,
    text: Annotated[str | None, typer.Option()] = None,
    memory_type: Annotated[str | None, typer.Option("--type", "-t")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Replaces the tags.")] = None,
    expected_version: Annotated[int | None, typer.Option(help="Fail if not current.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a new version of a memory."""
    changes: dict[str, Any] = {"text": text, "memory_type": memory_type, "tags": tag}
    with runtime(home) as mos:
        item = mos.update(item_id, expected_version=expected_version,
                          **{k: v for k, v in changes.items() if v is not None})
        _report(item, "updated", as_json)


@app.command()
def rollback(item_id: str, version: int, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Make an old version current again (as a new version)."""
    with runtime(home) as mos:
        _report(mos.rollback(item_id, version), "rolled back", as_json)


@app.command()
def delete(item_id: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Soft delete (restorable with rollback)."""
    with runtime(home) as mos:
        _report(mos.delete(item_id), "deleted", as_json)


@app.command()
def purge(
    item_ids: list[str],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase memories for good: every version, index entry and vector."""
    if not yes and not typer.confirm(f"Erase {len(item_ids)} memories for good?"):
        raise typer.Exit(1)
    with runtime(home) as mos:
        n = mos.purge(item_ids)
        if as_json:
            print_json({"purged": n})
        else:
            out.print(f"purged {n}")


def _report(item: MemoryItem, verb: str, as_json: bool) -> None:
    if as_json:
        print_json(_item_json(item))
    else:
        out.print(f"{verb} {item.id}: now version {item.version} ({item.state.value})")


# --- cube versions and maintenance ------------------------------------------------------
@app.command()
def snapshot(cube: CubeOpt = "default", label: str = "", home: HomeOpt = None,
             as_json: JsonOpt = False) -> None:
    """Record the cube's current version clock to roll back to later."""
    with runtime(home) as mos:
        snap = mos.snapshot(cube, label)
        if as_json:
            print_json({"id": snap.id, "cube_id": snap.cube_id, "clock": snap.clock,
                         "label": snap.label, "at": snap.at.isoformat()})
        else:
            out.print(f"snapshot {snap.id} of {cube} at clock {snap.clock}")


@app.command("rollback-cube")
def rollback_cube(
    clock: Annotated[int, typer.Argument(help="Snapshot clock (see `memosys snapshot`).")],
    cube: CubeOpt = "default",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Return a whole cube to its state at a snapshot clock."""
    with runtime(home) as mos:
        items = mos.rollback_cube(cube, clock)
        if as_json:
            print_json([_item_json(i) for i in items])
        else:
            out.print(f"rolled back {len(items)} memories of {cube} to clock {clock}")


@app.command()
def reembed(cube: str, home: HomeOpt = None) -> None:
    """Recompute a cube's embeddings with the configured embedder."""
    with runtime(home) as mos, progress_bar("re-embedding") as progress:
        n = mos.reembed(cube, progress)
    out.print(f"re-embedded {n} memories of {cube}")


@app.command()
def stats(cube: Annotated[str | None, typer.Option("--cube", "-c")] = None,
          home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Counts per cube, by state and type."""
    with runtime(home) as mos:
        data = mos.stats(cube)
        if as_json:
            print_json(data)
            return
        table = Table(title="memosys stats")
        for col in ("cube", "items", "active", "deleted", "clock", "embedder", "types"):
            table.add_column(col)
        for c in data["cubes"]:
            types = ", ".join(f"{k}={v}" for k, v in c["by_type"].items())
            table.add_row(c["name"], str(c["items"]), str(c["by_state"]["active"]),
                          str(c["by_state"]["deleted"]), str(c["clock"]), c["embedder"], types)
        out.print(table)


@bench_app.command("search")
def bench_search(
    n: Annotated[int, typer.Option("--n", help="Largest collection size.")] = 100_000,
    queries: Annotated[int, typer.Option(help="Queries per size.")] = 200,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    backend: Annotated[str, typer.Option(help="sqlite, or postgres (the configured database_url,"
                                         " else a throwaway embedded server).")] = "sqlite",
) -> None:
    """Insert rate and search latency at 1k/10k/100k memories."""
    from memosys.bench.search import run_search_bench

    if backend not in ("sqlite", "postgres"):
        raise typer.BadParameter("--backend must be sqlite or postgres")
    run_search_bench(n, queries, json_file, out, backend=backend)


@bench_app.command("locomo")
def bench_locomo(
    data: Annotated[Path | None, typer.Option(help="LoCoMo JSON (default: the dev split).")]
    = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    conversations: Annotated[int | None, typer.Option(help="Only the first N.")] = None,
    questions: Annotated[int | None, typer.Option(help="Only N questions each.")] = None,
    ablation: Annotated[bool, typer.Option(help="Re-run with each stage toggled.")] = False,
    facts: Annotated[bool, typer.Option(
        help="Also extract facts (MemReader) at ingestion: slow, about 1 s a turn.")] = False,
    graph: Annotated[str, typer.Option(help="on: add the graph stage (docs/graph.md).")] = "off",
    topics: Annotated[str, typer.Option(help="on: add the topic stage (docs/graph.md).")] = "off",
) -> None:
    """Evidence recall@k of LoCoMo questions, with BM25/dense baselines and ablation."""
    from memosys.bench.locomo import DEFAULT_LOCOMO, run_locomo_bench

    if graph not in ("on", "off") or topics not in ("on", "off"):
        raise typer.BadParameter("--graph and --topics must be on or off")
    with guarded():
        run_locomo_bench(data or DEFAULT_LOCOMO, json_file, conversations, ablation, out,
                         questions=questions, facts=facts, graph=graph == "on",
                         topics=topics == "on")


@bench_app.command("reader")
def bench_reader(
    extractor: Annotated[str, typer.Option(help="rules | llm | auto")] = "rules",
    llm: Annotated[str | None, typer.Option(help="LLM spec (default: configured llm).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="LLM output: auto | json | lines")] = "auto",
    data: Annotated[Path | None, typer.Option(help="Labelled JSONL set.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N messages.")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split (dev, heldout, ...).")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    home: HomeOpt = None,
) -> None:
    """Extraction precision/recall of the MemReader on a labelled message set."""
    from memosys.bench.reader import run_reader_bench
    from memosys.interface.reader import MemReader

    with runtime(home) as mos, progress_bar("extracting") as progress:
        reader = MemReader(mos, extractor=extractor, llm=llm, llm_format=fmt)
        run_reader_bench(reader.extractor, out, data_path=data, json_file=json_file,
                         limit=limit, split=split, progress=progress)


def _job_json(job: Any) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "cube_id": job.cube_id, "state": job.state,
            "attempts": job.attempts, "created_at": job.created_at.isoformat(),
            "updated_at": job.updated_at.isoformat(), "payload": job.payload,
            "result": job.result, "error": job.error}


@app.command()
def job(job_id: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Status of a background job (e.g. an extraction queued by `add --infer --no-wait`)."""
    with runtime(home) as mos:
        found = mos.job(job_id)
        if as_json:
            print_json(_job_json(found))
            return
        out.print(f"job {found.id} ({found.kind}): [bold]{found.state}[/bold], "
                  f"attempts {found.attempts}, updated {found.updated_at.isoformat()}")
        if found.error:
            out.print(f"error: {found.error}")
        if found.result:
            ops = found.result.get("ops", {})
            out.print(f"episodes {found.result.get('episodes')}, ops {ops}, "
                      f"errors {len(found.result.get('errors', []))}")


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="Run the queued jobs, then exit.")] = False,
    extractor: Annotated[str, typer.Option(help="rules | llm | auto")] = "auto",
    poll: Annotated[float, typer.Option(help="Seconds between polls when idle.")] = 1.0,
    home: HomeOpt = None,
) -> None:
    """Process queued jobs of every kind: extractions, consolidations (and the
    `consolidate_every_s` schedule), skill distillation, activation-cache builds. Ctrl-C to
    stop; an interrupted job is re-claimed when its lease runs out and resumes without
    duplicating memories."""
    import threading

    from memosys.interface.reader import MemReader

    with runtime(home) as mos:
        mos.reader = MemReader(mos, extractor=extractor)
        done = 0
        try:
            if once:
                while (job := mos.scheduler.run_next()) is not None:
                    done += 1
                    out.print(f"job {job.id}: {mos.job(job.id).state} ({job.kind})")
            else:
                out.print("worker running; Ctrl-C to stop")
                done = mos.scheduler.run_worker(threading.Event(), poll_interval=poll)
        except KeyboardInterrupt:
            pass
        out.print(f"processed {done} jobs")


@app.command()
def demo(home: HomeOpt = None) -> None:
    """A guided run on the embedded defaults: add, search, update, roll back."""
    from memosys.demo import run_demo

    with guarded():
        run_demo(home, out)


def main() -> None:
    app()


if __name__ == "__main__":  # `python -m memosys.interface.cli` as `python -m memosys`
    main()
