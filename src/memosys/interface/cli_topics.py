"""`memosys graph topics | topic | overview`: the multi-level index of a cube (cube ->
topics -> memories) for people (docs/graph.md, "Topics"). Registered on `graph_app`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from memosys.interface.cli_common import CubeOpt, HomeOpt, JsonOpt, out, print_json, runtime
from memosys.operation.topics import Overview, Topic


def topic_json(t: Topic, memories: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": t.id, "cube_id": t.cube_id, "label": t.label, "summary": t.summary,
        "keywords": list(t.keywords), "size": t.size, "summary_by": t.summary_by,
        "updated_at": t.updated_at.isoformat(), "memory_ids": list(t.memory_ids)}
    if memories is not None:
        data["memories"] = memories
    return data


def overview_json(o: Overview) -> dict[str, Any]:
    return {"cube_id": o.cube_id, "user": o.user, "memories": o.memories,
            "topics": [topic_json(t) | {"memory_ids": list(t.memory_ids[:20])}
                       for t in o.topics],
            "entities": [{"id": e.id, "name": e.name, "type": e.type.value,
                          "mentions": e.mentions} for e in o.entities]}


def _topics_table(title: str, topics: list[Topic]) -> Table:
    table = Table(title=title)
    for col in ("id", "size", "label", "summary"):
        table.add_column(col, overflow="fold")
    for t in topics:
        table.add_row(t.id, str(t.size), t.label, t.summary)
    return table


def topics(
    cube: CubeOpt,
    limit: Annotated[int, typer.Option(help="Most topics to list (largest first).")] = 50,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Cluster the cube again from scratch first.")] = False,
    summarise: Annotated[bool, typer.Option(
        "--summarise", help="Have the bound model label and summarise the largest topics "
        "that only have keyword labels.")] = False,
    home: HomeOpt = None, as_json: JsonOpt = False,
) -> None:
    """The cube's topics: clusters of its memories, each with a label and a summary."""
    with runtime(home) as mos:
        if rebuild:
            mos.topic_index.rebuild(cube)
        if summarise:
            mos.topic_index.summarise(cube)
        found = mos.topics(cube, limit=limit)
        if as_json:
            print_json([topic_json(t) for t in found])
            return
        out.print(_topics_table(f"topics of {cube}", found))


def topic(
    topic_id: Annotated[str, typer.Argument(help="Topic id (from `memosys graph topics`).")],
    limit: Annotated[int, typer.Option(help="Most memories to show.")] = 20,
    home: HomeOpt = None, as_json: JsonOpt = False,
) -> None:
    """One topic with its memories, most central first."""
    with runtime(home) as mos:
        t = mos.topic(topic_id)
        items = mos.topic_index.memories(topic_id, limit=limit)
        if as_json:
            print_json(topic_json(t, [{"id": i.id, "text": i.text,
                                        "created_at": i.created_at.isoformat()}
                                       for i in items]))
            return
        out.print(f"[bold]{t.label}[/bold] ({t.size} memories)\n{t.summary}")
        table = Table()
        table.add_column("id")
        table.add_column("memory", overflow="fold")
        for i in items:
            table.add_row(i.id, i.text)
        out.print(table)


def overview(
    cube: CubeOpt,
    user: Annotated[str | None, typer.Option(help="Only this user's memories.")] = None,
    home: HomeOpt = None, as_json: JsonOpt = False,
) -> None:
    """What the cube knows (about a user): main topics and entities."""
    with runtime(home) as mos:
        o = mos.overview(cube, user)
        if as_json:
            print_json(overview_json(o))
            return
        who = f" about {user}" if user else ""
        out.print(_topics_table(f"what {cube} knows{who}: topics", o.topics))
        table = Table(title="entities")
        for col in ("name", "type", "mentions"):
            table.add_column(col)
        for e in o.entities:
            table.add_row(e.name, e.type.value, str(e.mentions))
        out.print(table)


def register(app: typer.Typer) -> None:
    app.command("topics")(topics)
    app.command("topic")(topic)
    app.command("overview")(overview)
