"""`memosys events ...` (read and follow the change-event log, run the webhook dispatcher,
prune old events) and `memosys webhooks ...` (register receivers, read the delivery log).
docs/events.md."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from memosys.infra.events import Event
from memosys.interface.cli_common import (
    HomeOpt,
    JsonOpt,
    err,
    guarded,
    out,
    print_json,
    runtime,
)

events_app = typer.Typer(help="Change events: list, follow, dispatch webhooks.",
                         no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhooks: signed POSTs of change events.",
                           no_args_is_help=True)

SinceOpt = Annotated[int, typer.Option("--since", help="After this event sequence number.")]
CubeFilter = Annotated[list[str] | None, typer.Option("--cube", "-c",
                                                      help="Only this cube (repeatable).")]
KindsOpt = Annotated[str | None, typer.Option("--kinds", help="Comma-separated kinds.")]


def _event_table(events: list[Event]) -> Table:
    table = Table("seq", "kind", "cube", "memory", "v", "actor", "at", "text")
    for e in events:
        text = str(e.payload.get("text", ""))
        table.add_row(str(e.seq), e.kind, e.cube_id[:8], (e.memory_id or "")[:8],
                      "" if e.version is None else str(e.version), e.actor,
                      e.at.strftime("%Y-%m-%d %H:%M:%S"), text[:60])
    return table


@events_app.command("list")
def list_events(since: SinceOpt = 0, limit: Annotated[int, typer.Option(help="At most.")] = 100,
                cube: CubeFilter = None, kinds: KindsOpt = None, home: HomeOpt = None,
                as_json: JsonOpt = False) -> None:
    """Events after --since, oldest first, from cubes you may read."""
    with runtime(home) as mos:
        page = mos.events.list(since=since, limit=limit, cube=cube or None, kinds=kinds)
    if as_json:
        print_json({"events": [e.to_json() for e in page.events], "next": page.next})
    else:
        out.print(_event_table(page.events))
        out.print(f"next: --since {page.next}")


@events_app.command("tail")
def tail(since: Annotated[int | None, typer.Option(help="Start after this sequence "
                                                   "(default: from now).")] = None,
         cube: CubeFilter = None, kinds: KindsOpt = None,
         count: Annotated[int | None, typer.Option(help="Stop after this many.")] = None,
         home: HomeOpt = None) -> None:
    """Follow events as they happen, one JSON object per line (Ctrl-C to stop)."""
    seen = 0
    with runtime(home) as mos:
        try:
            for event in mos.events.follow(since=since, cube=cube or None, kinds=kinds):
                if event is None:
                    continue
                sys.stdout.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    break
        except KeyboardInterrupt:
            pass


@events_app.command("dispatch")
def dispatch(seconds: Annotated[float | None, typer.Option(help="Run this long, then exit "
                                                           "(default: until Ctrl-C).")] = None,
             home: HomeOpt = None) -> None:
    """Deliver webhooks in the foreground (`memosys serve` does this in the background).
    Several dispatchers may share one database."""
    with runtime(home) as mos:
        if not mos.actor.is_admin:
            err.print("[red]error[/red]: running the dispatcher needs an admin")
            raise typer.Exit(10)
        mos.events.start_dispatcher()
        err.print("dispatching webhooks; Ctrl-C to stop")
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass


@events_app.command("prune")
def prune(older_than_days: Annotated[float, typer.Option(help="Forget events older than "
                                                         "this many days.")] = 30.0,
          home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Forget old events no delivery still waits for (the log grows with every write)."""
    with runtime(home) as mos:
        if not mos.actor.is_admin:
            err.print("[red]error[/red]: pruning events needs an admin")
            raise typer.Exit(10)
        if older_than_days < 0:
            raise typer.BadParameter("--older-than-days must be >= 0")
        removed = mos.events.store.prune(time.time() - older_than_days * 86400)
    if as_json:
        print_json({"removed": removed})
    else:
        out.print(f"removed {removed} events")


@webhooks_app.command("add")
def add(url: Annotated[str, typer.Argument(help="http(s) URL that receives POSTs.")],
        secret: Annotated[str | None, typer.Option(help="Signing secret (default: "
                                                   "generated and printed once).")] = None,
        kinds: KindsOpt = None, cube: CubeFilter = None,
        description: Annotated[str, typer.Option(help="A note for people.")] = "",
        from_start: Annotated[bool, typer.Option("--from-start", help="Also deliver events "
                                                 "stored before now.")] = False,
        home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Register a webhook for your events (only cubes you may read)."""
    with runtime(home) as mos:
        hook = mos.events.add_webhook(url, secret=secret, kinds=kinds, cubes=cube or None,
                                      description=description, from_start=from_start)
    if as_json:
        print_json({**hook.to_json(), "secret": hook.secret})
    else:
        out.print(f"webhook {hook.id} -> {hook.url}")
        out.print(f"secret (shown only now): {hook.secret}")


@webhooks_app.command("list")
def list_hooks(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    with runtime(home) as mos:
        hooks = mos.events.webhooks()
    if as_json:
        print_json([h.to_json() for h in hooks])
        return
    table = Table("id", "owner", "url", "kinds", "cubes", "active", "cursor")
    for h in hooks:
        table.add_row(h.id, h.owner, h.url, ",".join(h.kinds) or "all",
                      ",".join(c[:8] for c in h.cube_ids) or "readable", str(h.active),
                      str(h.cursor))
    out.print(table)


@webhooks_app.command("remove")
def remove(hook_id: str, home: HomeOpt = None) -> None:
    with runtime(home) as mos:
        mos.events.remove_webhook(hook_id)
    out.print(f"removed webhook {hook_id}")


@webhooks_app.command("pause")
def pause(hook_id: str, home: HomeOpt = None) -> None:
    """Stop delivering (events queue up meanwhile); `resume` carries on."""
    with runtime(home) as mos:
        mos.events.set_webhook_active(hook_id, False)
    out.print(f"paused webhook {hook_id}")


@webhooks_app.command("resume")
def resume(hook_id: str, home: HomeOpt = None) -> None:
    with runtime(home) as mos:
        mos.events.set_webhook_active(hook_id, True)
    out.print(f"resumed webhook {hook_id}")


@webhooks_app.command("deliveries")
def deliveries(hook_id: str,
               state: Annotated[str | None, typer.Option(help="pending | delivered | dead")]
               = None, limit: Annotated[int, typer.Option(help="At most.")] = 50,
               home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Each event's delivery to the webhook: state, attempts, last status and error."""
    with runtime(home) as mos:
        found = mos.events.deliveries(hook_id, state=state, limit=limit)
    if as_json:
        print_json([d.to_json() for d in found])
        return
    table = Table("delivery", "event", "state", "attempts", "status", "error", "next")
    for d in found:
        table.add_row(d.id, str(d.event_seq), d.state, str(d.attempts),
                      "" if d.last_status is None else str(d.last_status), d.last_error or "",
                      d.next_at.strftime("%H:%M:%S") if d.state == "pending" else "")
    out.print(table)


@webhooks_app.command("attempts")
def attempts(hook_id: str,
             delivery: Annotated[str | None, typer.Option(help="Only this delivery.")] = None,
             limit: Annotated[int, typer.Option(help="At most.")] = 50,
             home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """The delivery log: every attempt's status code, error and duration."""
    with runtime(home) as mos:
        found = mos.events.attempts(hook_id, delivery_id=delivery, limit=limit)
    if as_json:
        print_json([a.to_json() for a in found])
        return
    table = Table("at", "event", "attempt", "status", "error", "ms")
    for a in found:
        table.add_row(a.at.strftime("%Y-%m-%d %H:%M:%S"), str(a.event_seq), str(a.attempt),
                      "" if a.status_code is None else str(a.status_code), a.error or "",
                      f"{a.duration_ms:.1f}")
    out.print(table)


@webhooks_app.command("retry")
def retry(hook_id: str, delivery_id: str,
          attempts: Annotated[int, typer.Option(help="More tries.")] = 1,
          home: HomeOpt = None) -> None:
    """Send a dead-lettered delivery again."""
    with runtime(home) as mos:
        d = mos.events.retry_delivery(hook_id, delivery_id, attempts)
    out.print(f"delivery {d.id} is {d.state} again")


def bench_events(
    n: Annotated[int, typer.Option("--n", help="Memories added (then half updated).")] = 1000,
    deliveries: Annotated[int, typer.Option(help="Webhook deliveries timed.")] = 200,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")]
    = None,
) -> None:
    """What event capture costs a commit, writes while a receiver hangs, webhook latency."""
    from memosys.bench.events import run_events_bench

    if n < 10 or deliveries < 1:
        raise typer.BadParameter("need --n >= 10 and --deliveries >= 1")
    with guarded():
        run_events_bench(n, deliveries, json_file, out)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Called once from memosys.interface.cli."""
    app.add_typer(events_app, name="events")
    app.add_typer(webhooks_app, name="webhooks")
    bench_app.command("events")(bench_events)
