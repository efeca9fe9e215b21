"""`memosys graph ...`: the semantic graph of a cube, for people (docs/graph.md)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from memosys.errors import ValidationError
from memosys.infra.vault.graph_base import Entity, Relation
from memosys.interface.cli_common import (
    CubeOpt,
    HomeOpt,
    JsonOpt,
    guarded,
    out,
    print_json,
    runtime,
)
from memosys.interface.cli_topics import register as register_topics

graph_app = typer.Typer(help="Entities, relations and topics of a cube (the semantic graph).",
                        no_args_is_help=True)


register_topics(graph_app)
NameArg = Annotated[str, typer.Argument(help="Entity name, alias, id or \"X's role\".")]


def _date(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"--{name}: not an ISO date/time: {value!r}") from None


def _entity_json(e: Entity) -> dict[str, Any]:
    return {"id": e.id, "name": e.name, "type": e.type.value, "mentions": e.mentions,
            "aliases": list(e.aliases), "owner_id": e.owner_id, "role": e.role}


def _relation_json(r: Relation) -> dict[str, Any]:
    return {"subject": r.subject.name, "predicate": r.predicate, "object": r.object.name,
            "valid_from": r.valid_from, "valid_to": r.valid_to, "confidence": r.confidence,
            "functional": r.functional,
            "sources": [{"id": i, "version": v} for i, v in r.sources]}


def _day(value: datetime | None) -> str:
    return value.date().isoformat() if value is not None else ""


def _relations_table(title: str, relations: list[Relation]) -> Table:
    table = Table(title=title)
    for col in ("subject", "predicate", "object", "from", "to", "conf", "sources"):
        table.add_column(col, overflow="fold")
    for r in relations:
        table.add_row(r.subject.name, r.predicate, r.object.name, _day(r.valid_from),
                      _day(r.valid_to), f"{r.confidence:.2f}", str(len(r.sources)))
    return table


@graph_app.command("build")
def build(cube: CubeOpt, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Re-derive the cube's graph from all its memories (idempotent)."""
    with runtime(home) as mos:
        stats = mos.graph.build(cube)
        if as_json:
            print_json(asdict(stats))
            return
        out.print(f"graph of {cube}: {stats.entities} entities, {stats.mentions} mentions, "
                  f"{stats.relations} relations, {stats.follows} follows, "
                  f"{stats.derived} derived-from edges")


@graph_app.command("entities")
def entities(
    cube: CubeOpt,
    prefix: Annotated[str | None, typer.Option(help="Names or aliases starting so.")] = None,
    type: Annotated[str | None, typer.Option(help="person, place, organisation, ...")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Entities of a cube, most-mentioned first."""
    with runtime(home) as mos:
        found = mos.graph.entities(cube, prefix=prefix, type=type, limit=limit)
        if as_json:
            print_json([_entity_json(e) for e in found])
            return
        table = Table(title=f"entities of {cube}")
        for col in ("name", "type", "mentions", "aliases", "id"):
            table.add_column(col, overflow="fold")
        for e in found:
            table.add_row(e.name, e.type.value, str(e.mentions),
                          ", ".join(a for a in e.aliases if a != e.name), e.id)
        out.print(table)


@graph_app.command("entity")
def entity(
    name: NameArg,
    cube: CubeOpt,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Only facts that held then "
                                              "(ISO date).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One entity: its facts over time, its neighbours and the memories behind it."""
    with runtime(home) as mos:
        page = mos.graph.page(cube, name)
        facts = page.facts
        when = _date(as_of, "as-of")
        if when is not None:
            facts = mos.graph.facts(cube, page.entity.id, as_of=when)
        if as_json:
            print_json({"entity": _entity_json(page.entity),
                         "facts": [_relation_json(r) for r in facts],
                         "neighbours": [{"entity": n.entity.name, "hops": n.hops, "via": n.via,
                                         "weight": round(n.weight, 4)} for n in page.neighbours],
                         "memories": [{"id": m.id, "text": m.text, "at": m.event_time}
                                      for m in page.memories]})
            return
        e = page.entity
        out.print(f"[bold]{e.name}[/bold] ({e.type.value}, {e.mentions} mentions) {e.id}")
        if e.aliases:
            out.print("aliases: " + ", ".join(e.aliases))
        out.print(_relations_table("facts" + (f" as of {as_of}" if as_of else " over time"),
                                   facts))
        table = Table(title="memories")
        for col in ("when", "text"):
            table.add_column(col, overflow="fold")
        for m in page.memories:
            table.add_row(_day(m.event_time), m.text)
        out.print(table)


@graph_app.command("neighbours")
def neighbours(
    name: NameArg,
    cube: CubeOpt,
    hops: Annotated[int, typer.Option(help="1-4 relation hops.")] = 1,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Entities near one: by relations (recursive, up to --hops) and co-mentions."""
    with runtime(home) as mos:
        found = mos.graph.neighbours(cube, name, hops=hops, limit=limit)
        if as_json:
            print_json([{**_entity_json(n.entity), "hops": n.hops, "via": n.via,
                          "weight": n.weight} for n in found])
            return
        table = Table(title=f"neighbours of {name}")
        for col in ("name", "type", "hops", "via", "weight"):
            table.add_column(col)
        for n in found:
            table.add_row(n.entity.name, n.entity.type.value, str(n.hops), n.via,
                          f"{n.weight:.2f}")
        out.print(table)


@graph_app.command("changes")
def changes(
    name: NameArg,
    cube: CubeOpt,
    since: Annotated[str | None, typer.Option(help="ISO date.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What changed about an entity: statements that began or ended in the window."""
    with runtime(home) as mos:
        found = mos.graph.changes(cube, name, since=_date(since, "since"),
                                  until=_date(until, "until"))
        if as_json:
            print_json([_relation_json(r) for r in found])
            return
        out.print(_relations_table(f"changes of {name}", found))


@graph_app.command("path")
def path(
    source: Annotated[str, typer.Argument(help="From this entity.")],
    target: Annotated[str, typer.Argument(help="To this entity.")],
    cube: CubeOpt,
    max_hops: Annotated[int, typer.Option(help="1-4.")] = 4,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A shortest chain of relations between two entities."""
    with runtime(home) as mos:
        steps = mos.graph.path(cube, source, target, max_hops=max_hops)
        if as_json:
            print_json(None if steps is None else
                        [{"entity": e.name, "via": p} for e, p in steps])
            return
        if steps is None:
            out.print(f"no path within {max_hops} hops")
            return
        out.print(" ".join(f"-{p}-> {e.name}" if p else e.name for e, p in steps))


def bench_graph(
    sizes: Annotated[str, typer.Option(help="Comma-separated memory counts.")] = "10000,100000",
    queries: Annotated[int, typer.Option(help="Entity queries per size.")] = 200,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
) -> None:
    """Graph build rate (memories/s) and entity-query latency on synthetic chat."""
    from memosys.bench.graph import run_graph_bench

    try:
        counts = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter("--sizes must be comma-separated integers") from None
    with guarded():
        run_graph_bench(counts, queries, json_file, out)
