"""`memosys chat`, `memosys activation list` and `memosys bench ttft`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from memosys.config import Settings
from memosys.errors import ValidationError
from memosys.interface.cli_common import HomeOpt, guarded, out, runtime

activation_app = typer.Typer(help="Activation (KV-cache) memories.", no_args_is_help=True)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this module's commands to the `memosys` app."""
    app.command("chat")(chat)
    app.add_typer(activation_app, name="activation")
    bench_app.command("ttft")(bench_ttft)
    bench_app.command("composition")(bench_composition)


def chat(
    message: Annotated[str, typer.Argument(help="What the user says.")],
    cube: Annotated[list[str] | None, typer.Option("--cube", help="Cube(s) to read; the first "
                                                   "is written to (default: 'default').")] = None,
    user: Annotated[str | None, typer.Option(help="User id stored with the turns.")] = None,
    session: Annotated[str | None, typer.Option(help="Session id.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    remember: Annotated[bool, typer.Option(help="Store the turns as memories.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ChatResult as JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """Ask the bound model with memory; the answer streams, then the memories it used."""

    with runtime(home) as mos:
        run = mos.chat([{"role": "user", "content": message}], cube_ids=cube, user=user,
                       session=session, stream=True, max_tokens=max_tokens,
                       remember=remember)
        for chunk in run:  # type: ignore[union-attr]
            if not as_json:
                out.print(chunk, end="", markup=False, highlight=False)
        result = run.result  # type: ignore[union-attr]
        mos.scheduler.run_pending(kinds=("extract",))  # finish extraction before exit
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
        return
    out.print()
    for d in result.decisions:
        if d.form != "skipped":
            out.print(f"[dim]{d.form:<10} {d.section:<10} {d.memory_id}  {d.reason}[/dim]")


@activation_app.command("work")
def activation_work(
    once: Annotated[bool, typer.Option("--once", help="Run the queued jobs, then exit.")] = False,
    home: HomeOpt = None,
) -> None:
    """Run the scheduler's queued jobs (activation cache builds and extractions)."""
    import time


    done = 0
    try:
        with runtime(home) as mos:
            while True:
                ran = mos.scheduler.run_pending()
                done += ran
                if once:
                    break
                if not ran:
                    time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    out.print(f"processed {done} jobs")


@activation_app.command("list")
def activation_list(
    cube: Annotated[str, typer.Argument(help="Cube name or id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """The cube's activation caches: tokens, sources, size, whether the file is on disk."""
    from memosys.memories.activation import ACTIVATION_TAG

    with runtime(home) as mos:
        found = mos.get_cube(cube)
        items = mos.list(found.id, {"tags": [ACTIVATION_TAG]}, limit=1000)
        root = mos.settings.home / "activation" / found.id
        rows = []
        for item in items:
            header = item.metadata.get("activation", {})
            rows.append({
                "id": item.id, "key": header.get("key"),
                "tokens": header.get("token_count"), "sources": item.derived_from,
                "bytes": header.get("bytes"), "built_at": header.get("built_at"),
                "on_disk": (root / f"{item.id}.safetensors").is_file(),
                "heat": item.stats.heat,
            })
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"activation caches of {cube}")
    for col in ("id", "tokens", "sources", "MB", "on disk", "heat", "built"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], str(r["tokens"]), str(len(r["sources"])),
                      f"{(r['bytes'] or 0) / 2**20:.1f}", "yes" if r["on_disk"] else "evicted",
                      f"{r['heat']:.1f}", str(r["built_at"]))
    out.print(table)


def bench_ttft(
    sizes: Annotated[str, typer.Option(help="Memory prefix sizes in tokens, comma-separated.")]
    = "512,1024,2048,4096",
    repeats: Annotated[int, typer.Option(help="Timed runs per cell (median; after a warm-up).")]
    = 3,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length compared for identity.")]
    = 24,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default).")] = 1,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    home: HomeOpt = None,
) -> None:
    """TTFT with memories in the prompt vs in a KV cache, build time, size, identical output."""
    from memosys.bench.ttft import run_ttft_bench

    with guarded():
        try:
            parsed = tuple(int(s) for s in sizes.split(",") if s.strip())
        except ValueError:
            raise ValidationError(f"--sizes must be integers, got {sizes!r}") from None
        if not parsed or min(parsed) < 16 or repeats < 1 or max_new_tokens < 1:
            raise ValidationError("--sizes >= 16, --repeats >= 1, --max-new-tokens >= 1")
        run_ttft_bench(parsed, repeats=repeats, max_new_tokens=max_new_tokens,
                       json_file=json_file, out=out, settings=Settings.load(home),
                       threads=threads or None)


def bench_composition(
    max_new_tokens: Annotated[int, typer.Option(help="Answer length compared.")] = 24,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default).")] = 1,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    home: HomeOpt = None,
) -> None:
    """Quality cost of composing cached blocks: hierarchical vs naive concat vs RoPE shift."""
    from memosys.bench.composition import run_composition_bench
    from memosys.models.llm import make_llm
    from memosys.models.local_llm import LocalLLM

    settings = Settings.load(home)
    with guarded():
        llm = make_llm("local", cache_dir=settings.llm_cache_dir, home=settings.home)
        assert isinstance(llm, LocalLLM)
        run_composition_bench(max_new_tokens=max_new_tokens, json_file=json_file, out=out,
                              llm=llm, threads=threads or None)
