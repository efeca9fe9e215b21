"""`memosys users|keys|share|unshare|acl|policy|audit|lifecycle|review|feedback`.

Every `memosys` command acts as the local admin unless `MEMOSYS_API_KEY` holds an API key:
then it acts as that key's user, with the same checks every other interface gets.
Exit codes add 9 (unauthenticated) and 10 (permission denied) to cli.py's list.
"""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from memosys.errors import ValidationError
from memosys.interface.cli_common import HomeOpt, JsonOpt, err, guarded, out, print_json, runtime

users_app = typer.Typer(help="Users and their roles (admin only).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
policy_app = typer.Typer(help="Per-cube policy: PII handling, TTL, decay.", no_args_is_help=True)
lifecycle_app = typer.Typer(help="States, TTL and decay.", no_args_is_help=True)
review_app = typer.Typer(help="The review queue.", no_args_is_help=True)


def register(app: typer.Typer, bench_app: typer.Typer | None = None) -> None:
    if bench_app is not None:
        bench_app.command("governance")(bench_governance)
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
    app.add_typer(policy_app, name="policy")
    app.add_typer(lifecycle_app, name="lifecycle")
    app.add_typer(review_app, name="review")
    app.command("share")(share)
    app.command("unshare")(unshare)
    app.command("acl")(acl)
    app.command("feedback")(feedback)


# --- users ---------------------------------------------------------------------------------
@users_app.command("create")
def users_create(name: str, role: Annotated[str, typer.Option(
        help="admin | owner | member | reader")] = "member",
        home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    with runtime(home) as mos:
        user = mos.create_user(name, role=role)
        if as_json:
            print_json({"id": user.id, "role": user.role, "created_at": user.created_at})
        else:
            out.print(f"created user [bold]{user.id}[/bold] ({user.role})")


@users_app.command("list")
def users_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    with runtime(home) as mos:
        users = mos.list_users()
        if as_json:
            print_json([{"id": u.id, "role": u.role, "created_at": u.created_at}
                         for u in users])
            return
        table = Table(title="users")
        for col in ("user", "role", "created"):
            table.add_column(col)
        for u in users:
            table.add_row(u.id, u.role, u.created_at.isoformat(timespec="seconds"))
        out.print(table)


@users_app.command("role")
def users_role(name: str, role: str, home: HomeOpt = None) -> None:
    with runtime(home) as mos:
        user = mos.set_user_role(name, role)
        out.print(f"{user.id} is now {user.role}")


@users_app.command("delete")
def users_delete(name: str, home: HomeOpt = None) -> None:
    """Remove a user; their keys stop working at once."""
    with runtime(home) as mos:
        mos.delete_user(name)
        out.print(f"deleted user {name}")


# --- keys ----------------------------------------------------------------------------------
def _key_json(k: Any) -> dict[str, Any]:
    return {"id": k.id, "user": k.user_id, "scopes": sorted(k.scopes), "agent": k.agent,
            "created_at": k.created_at, "revoked_at": k.revoked_at, "active": k.active}


@keys_app.command("create")
def keys_create(
    user: str,
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="Repeatable: read, write, delete, share, sensitive, admin "
        "(default read, write, delete, share).")] = None,
    agent: Annotated[str | None, typer.Option(help="The agent this key is for.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; the secret is printed this once (only its hash is stored)."""
    with runtime(home) as mos:
        kwargs: dict[str, Any] = {"agent": agent}
        if scope:
            kwargs["scopes"] = scope
        key_id, secret = mos.create_api_key(user, **kwargs)
        if as_json:
            print_json({"id": key_id, "secret": secret})
        else:
            out.print(f"key {key_id} for {user}: [bold]{secret}[/bold]\n"
                      "store it now; it is not shown again")


@keys_app.command("list")
def keys_list(user: Annotated[str | None, typer.Option()] = None, home: HomeOpt = None,
              as_json: JsonOpt = False) -> None:
    with runtime(home) as mos:
        keys = mos.list_api_keys(user)
        if as_json:
            print_json([_key_json(k) for k in keys])
            return
        table = Table(title="API keys")
        for col in ("id", "user", "scopes", "agent", "state"):
            table.add_column(col)
        for k in keys:
            table.add_row(k.id, k.user_id, ",".join(sorted(k.scopes)), k.agent or "",
                          "active" if k.active else "revoked")
        out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, home: HomeOpt = None) -> None:
    """Revoke a key; it stops working immediately."""
    with runtime(home) as mos:
        mos.revoke_api_key(key_id)
        out.print(f"revoked {key_id}")


# --- sharing -------------------------------------------------------------------------------
def share(
    cube: str,
    user: str,
    perm: Annotated[list[str] | None, typer.Option(
        "--perm", help="Repeatable: read, write, delete, share (default read).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Share a cube with a user (replaces what they had)."""
    with runtime(home) as mos:
        g = mos.share_cube(cube, user, perm or ["read"])
        if as_json:
            print_json({"cube_id": g.cube_id, "user": g.user_id,
                         "permissions": sorted(g.permissions)})
        else:
            out.print(f"{user} may now {', '.join(sorted(g.permissions))} in {cube}")


def unshare(cube: str, user: str, home: HomeOpt = None) -> None:
    """Take a user's access to a cube away."""
    with runtime(home) as mos:
        removed = mos.unshare_cube(cube, user)
        out.print(f"{user} {'no longer has' if removed else 'had no'} access to {cube}")


def acl(cube: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Who may do what in a cube (besides its owner and admins)."""
    with runtime(home) as mos:
        grants = mos.cube_acl(cube)
        if as_json:
            print_json([{"user": g.user_id, "permissions": sorted(g.permissions),
                          "granted_by": g.granted_by, "at": g.at} for g in grants])
            return
        table = Table(title=f"ACL of {cube}")
        for col in ("user", "permissions", "granted by"):
            table.add_column(col)
        for g in grants:
            table.add_row(g.user_id, ",".join(sorted(g.permissions)), g.granted_by)
        out.print(table)


# --- policy --------------------------------------------------------------------------------
@policy_app.command("show")
def policy_show(cube: str, home: HomeOpt = None) -> None:
    with runtime(home) as mos:
        print_json(mos.cube_policy(cube))


@policy_app.command("set")
def policy_set(
    cube: str,
    pii: Annotated[str | None, typer.Option(help="store | mask | redact | reject")] = None,
    ttl: Annotated[list[str] | None, typer.Option(
        help="Repeatable TYPE=SECONDS, e.g. episode=86400.")] = None,
    decay: Annotated[list[str] | None, typer.Option(
        help="Repeatable NAME=VALUE: half_life_days, archive_below, min_age_days, "
        "enabled.")] = None,
    home: HomeOpt = None,
) -> None:
    """Change a cube's policy (needs the share permission)."""
    changes: dict[str, Any] = {}
    try:
        if pii is not None:
            changes["pii"] = pii
        if ttl:
            changes["ttl"] = {k: float(v) for k, v in (_pair(p) for p in ttl)}
        if decay:
            changes["decay"] = {k: (v.lower() == "true") if k == "enabled" else float(v)
                                for k, v in (_pair(p) for p in decay)}
    except ValueError as exc:
        err.print(f"[red]error[/red] (invalid_input): {exc}")
        raise typer.Exit(2) from None
    with runtime(home) as mos:
        print_json(mos.set_cube_policy(cube, **changes))


def _pair(value: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise ValidationError(f"expected NAME=VALUE, got {value!r}")
    return name.strip(), rest.strip()


# --- audit ---------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Recompute the hash chain; exit 1 if any entry was changed, removed or reordered."""
    with runtime(home) as mos:
        result = mos.verify_audit()
    if as_json:
        print_json({"ok": result.ok, "entries": result.entries, "head": result.head,
                     "first_bad_seq": result.first_bad_seq, "reason": result.reason})
    elif result.ok:
        out.print(f"audit log intact: {result.entries} entries, head {result.head}")
    else:
        out.print(f"[red]audit log TAMPERED[/red] at entry {result.first_bad_seq}: "
                  f"{result.reason}")
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("list")
def audit_list(
    cube: Annotated[str | None, typer.Option("--cube", "-c")] = None,
    actor: Annotated[str | None, typer.Option()] = None,
    item: Annotated[str | None, typer.Option(help="Only entries about this memory id.")] = None,
    limit: int = 50,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Newest entries first."""
    with runtime(home) as mos:
        entries = mos.audit_log(cube=cube, actor=actor, item_id=item, limit=limit)
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    table = Table(title="audit log")
    for col in ("seq", "at", "actor", "op", "outcome", "items", "detail"):
        table.add_column(col, overflow="fold")
    for e in entries:
        items = ", ".join(f"{i[:8]}…v{v}" for i, v in e.items[:5])
        if len(e.items) > 5:
            items += f" (+{len(e.items) - 5})"
        table.add_row(str(e.seq), e.at.isoformat(timespec="seconds"),
                      e.actor + (f"/{e.agent}" if e.agent else ""), e.op, e.outcome, items,
                      json.dumps(e.detail, default=str))
    out.print(table)


# --- lifecycle -----------------------------------------------------------------------------
@lifecycle_app.command("run")
def lifecycle_run(
    cube: Annotated[str | None, typer.Option("--cube", "-c")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply TTL and decay, queue reviews, and report every transition with its reason."""
    with runtime(home) as mos:
        report = mos.lifecycle.run(cube, dry_run=dry_run)
    if as_json:
        print_json(report.as_dict())
        return
    table = Table(title="lifecycle" + (" (dry run)" if dry_run else ""))
    for col in ("id", "from", "to", "reason"):
        table.add_column(col, overflow="fold")
    for t in report.transitions:
        table.add_row(t.item_id, t.from_state, t.to_state, t.reason)
    out.print(table)
    out.print(f"{len(report.transitions)} transitions, {len(report.reviews_added)} reviews "
              f"queued, {len(report.skipped)} skipped (changed meanwhile)")


def _state_command(name: str, doc: str) -> None:
    def command(item_id: str, home: HomeOpt = None) -> None:
        with runtime(home) as mos:
            item = getattr(mos.lifecycle, name)(item_id)
            out.print(f"{item.id}: now {item.state.value} (version {item.version})")

    command.__doc__ = doc
    lifecycle_app.command(name)(command)


_state_command("freeze", "Keep a memory as is and out of retrieval.")
_state_command("archive", "Move a memory to cold storage (not retrieved by default).")
_state_command("restore", "Make a frozen, archived or deleted memory active again.")


@lifecycle_app.command("ttl")
def lifecycle_ttl(item_id: str, seconds: Annotated[float, typer.Argument(
        help="Seconds from now; 0 removes the memory's own TTL.")], home: HomeOpt = None
        ) -> None:
    with runtime(home) as mos:
        item = mos.lifecycle.set_ttl(item_id, seconds or None)
        out.print(f"{item.id} expires at {item.metadata.get('expires_at', 'never')}")


# --- review --------------------------------------------------------------------------------
@review_app.command("list")
def review_list(cube: Annotated[str | None, typer.Option("--cube", "-c")] = None,
                state: Annotated[str, typer.Option(help="open | approved | rejected")] = "open",
                home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    with runtime(home) as mos:
        entries = mos.lifecycle.review_queue(cube, state=state)
        if as_json:
            print_json([{"id": r.id, "cube_id": r.cube_id, "item_id": r.item_id,
                          "kind": r.kind, "reason": r.reason, "related": list(r.related_ids),
                          "state": r.state, "created_at": r.created_at} for r in entries])
            return
        table = Table(title="review queue")
        for col in ("id", "kind", "memory", "reason", "related"):
            table.add_column(col, overflow="fold")
        for r in entries:
            table.add_row(r.id, r.kind, r.item_id, r.reason, ", ".join(r.related_ids))
        out.print(table)


@review_app.command("approve")
def review_approve(review_id: str, home: HomeOpt = None) -> None:
    with runtime(home) as mos:
        done = mos.lifecycle.resolve(review_id, "approve")
        out.print(f"{done.id}: {done.state}")


@review_app.command("reject")
def review_reject(review_id: str, home: HomeOpt = None) -> None:
    with runtime(home) as mos:
        done = mos.lifecycle.resolve(review_id, "reject")
        out.print(f"{done.id}: {done.state}")


# --- feedback ------------------------------------------------------------------------------
def feedback(
    item_id: str,
    kind: Annotated[str, typer.Argument(help="useful | wrong | outdated | a number")],
    note: Annotated[str | None, typer.Option()] = None,
    correction: Annotated[str | None, typer.Option(
        help="With wrong/outdated: the corrected text (a new version).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell memosys a memory was useful, wrong or outdated (feeds heat; may correct it)."""
    value: float | str = kind
    with suppress(ValueError):
        value = float(kind)
    with runtime(home) as mos:
        item = mos.feedback(item_id, value, note, correction=correction)
        if as_json:
            print_json({"item": item.model_dump(mode="json") if item else None})
        elif item is not None:
            out.print(f"{item.id}: now version {item.version} ({item.state.value})")
        else:
            out.print(f"recorded {kind} for {item_id}")


# --- bench ---------------------------------------------------------------------------------
def bench_governance(
    n: Annotated[int, typer.Option("--n", help="Memories in the cube.")] = 2000,
    queries: Annotated[int, typer.Option(help="Distinct queries (each run 3 times).")] = 50,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")]
    = None,
) -> None:
    """Cost of permission checks and the audit log per search, and of authenticate."""
    from memosys.bench.governance import run_governance_bench

    with guarded():
        run_governance_bench(n, queries, json_file, out)
