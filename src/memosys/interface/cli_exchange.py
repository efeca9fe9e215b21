"""`memosys export | import | verify | keygen | store ...`: cube archives (MIP), interop
files and MemStore publish/subscribe.

Registered on the main app by `register(app)` (one line in cli.py). Exit codes follow
memosys.errors: 20 invalid archive, 21 tampered (hash or signature), 22 unsafe (limits,
zip-slip, bombs), plus the usual 2 invalid input, 4 conflict, ...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from memosys.config import Settings
from memosys.errors import ValidationError
from memosys.interface.cli_common import HomeOpt, err, guarded, out, runtime

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
TrustOpt = Annotated[
    list[str] | None,
    typer.Option("--trust", help="Public key (file or 'ed25519:...') the archive must be "
                 "signed by; repeatable."),
]


@contextmanager
def _bar(description: str) -> Iterator[Callable[[int, int], None]]:
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _emit(as_json: bool, value: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n")
    else:
        for line in lines:
            out.print(line)


def _trusted(keys: list[str] | None) -> list[Any] | None:
    from memosys.infra.exchange_signing import load_public_key

    return [load_public_key(k) for k in keys] if keys else None


def export_cmd(
    cube: Annotated[str, typer.Argument(help="Cube name or id.")],
    file: Annotated[Path, typer.Argument(help="Where to write (.mip, or .jsonl).")],
    sign: Annotated[Path | None, typer.Option("--sign", help="ed25519 private key file "
                                              "(`memosys keygen`) to sign with.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="mip (the full, verifiable archive) "
                                     "or jsonl (plain, readable).")] = "mip",
    embeddings: Annotated[bool, typer.Option("--embeddings/--no-embeddings",
                                             help="Include the vectors.")] = True,
    since: Annotated[int, typer.Option(help="Only versions after this clock (a delta).")] = 0,
    until: Annotated[int | None, typer.Option(help="The cube as of this clock "
                                              "(default: now).")] = None,
    redact: Annotated[bool, typer.Option("--redact/--no-redact", help="Redact sensitive "
                                         "data (default); --no-redact needs the "
                                         "'sensitive' scope.")] = True,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a cube: memories, full version history, embeddings; optionally signed."""
    from memosys.infra.exchange import export_cube, load_private_key
    from memosys.infra.exchange_interop import export_plain_jsonl

    with runtime(home) as mos:
        assert mos is not None
        if fmt == "jsonl":
            n = export_plain_jsonl(mos, cube, file, redact=redact)
            _emit(as_json, {"path": str(file), "memories": n},
                  [f"wrote {n} memories to {file}"])
            return
        if fmt != "mip":
            raise ValidationError(f"--format must be mip or jsonl, got {fmt!r}")
        key = load_private_key(sign) if sign else None
        with _bar("exporting") as progress:
            report = export_cube(mos, cube, file, signing_key=key,
                                 include_embeddings=embeddings, since=since, until=until,
                                 redact=redact, progress=progress)
        lines = [f"wrote {report.path}: {report.memories} memories, {report.versions} "
                 f"versions, {report.embeddings} embeddings (clock {report.since}.."
                 f"{report.until})"]
        if report.signed_by:
            lines.append(f"signed with key {report.signed_by}")
        lines += report.messages
        _emit(as_json, asdict(report), lines)


def import_cmd(
    file: Annotated[Path, typer.Argument(help="A .mip archive, mem0 export, JSONL or CSV.")],
    as_name: Annotated[str | None, typer.Option("--as", help="Target cube name "
                                                "(default: the archive's, or the file's "
                                                "stem for mem0/jsonl/csv).")] = None,
    on_conflict: Annotated[str | None, typer.Option(
        "--on-conflict", help="If the cube exists: merge (add the versions it lacks), skip, "
        "or replace.")] = None,
    keep_ids: Annotated[bool, typer.Option("--keep-ids", help="Keep the archive's cube and "
                                           "memory ids (default: new, stable ids).")] = False,
    source: Annotated[str, typer.Option("--from", help="mip, mem0, jsonl or csv.")] = "mip",
    trust: TrustOpt = None,
    max_size: Annotated[int | None, typer.Option(help="Refuse archives larger than this "
                                                 "many bytes.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a cube archive (verified, atomic) or memories from another system."""
    from memosys.infra.exchange import ArchiveLimits, import_archive
    from memosys.infra.exchange_interop import SOURCES, import_file

    with runtime(home) as mos:
        assert mos is not None
        if source not in SOURCES:
            raise ValidationError(f"--from must be one of {', '.join(SOURCES)}")
        if on_conflict is not None and on_conflict not in ("merge", "skip", "replace"):
            raise ValidationError("--on-conflict must be merge, skip or replace")
        with _bar("importing") as progress:
            if source == "mip":
                limits = ArchiveLimits() if max_size is None else ArchiveLimits(
                    max_archive_bytes=max_size)
                report = import_archive(mos, file, name=as_name, keep_ids=keep_ids,
                                        on_conflict=on_conflict,  # type: ignore[arg-type]
                                        trusted_keys=_trusted(trust), limits=limits,
                                        progress=progress)
            else:
                report = import_file(mos, file, source=source, name=as_name or file.stem,
                                     on_conflict=on_conflict,  # type: ignore[arg-type]
                                     progress=progress)
        lines = [f"{report.action} cube {report.cube} ({report.cube_id}): "
                 f"{report.memories_added} added, {report.memories_updated} updated, "
                 f"{report.memories_unchanged} unchanged, {report.versions_added} versions"]
        if report.signed_by:
            lines.append(f"signature verified: key {report.signed_by}")
        lines += report.messages + [f"dropped: {d}" for d in report.dropped]
        _emit(as_json, asdict(report), lines)


def verify_cmd(
    file: Annotated[Path, typer.Argument(help="A .mip archive.")],
    trust: TrustOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check an archive completely (limits, hashes, signature, every record) without
    importing it."""
    from memosys.infra.exchange import read_archive

    with guarded():
        parsed = read_archive(file, trusted_keys=_trusted(trust))
        m = parsed.manifest
        summary = {"cube": parsed.header.name, "cube_id": parsed.header.id,
                   "embedder": m["embedder"], "counts": m["counts"], "range": m["range"],
                   "signed_by": parsed.signed_by, "redaction": m["redaction"],
                   "generator": m["generator"], "created_at": m["created_at"]}
        _emit(as_json, summary, [
            f"ok: cube {parsed.header.name}, {m['counts']['memories']} memories, "
            f"{m['counts']['versions']} versions, embedder {m['embedder']['id']}",
            f"signed by {parsed.signed_by}" if parsed.signed_by else "not signed",
        ])


def keygen_cmd(
    path: Annotated[Path | None, typer.Argument(help="Private key file (default "
                                                "<home>/keys/mip-ed25519); the public key "
                                                "goes to PATH.pub.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing keys.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an ed25519 key pair for signing cube archives."""
    from memosys.infra.exchange import generate_keypair

    with guarded():
        target = path or Settings.load(home).home / "keys" / "mip-ed25519"
        pair = generate_keypair(target, overwrite=force)
        _emit(as_json, {k: str(v) for k, v in asdict(pair).items()}, [
            f"private key: {pair.private_path} (keep it secret)",
            f"public key:  {pair.public_path}",
            f"key id:      {pair.key_id}",
            f"{pair.public_key}",
        ])


# --- MemStore ------------------------------------------------------------------------------
store_app = typer.Typer(help="MemStore: publish cubes, subscribe to other installations' "
                        "publications and pull their updates.", no_args_is_help=True)
KeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="MEMOSYS_STORE_API_KEY",
                 help="API key for the remote service (default $MEMOSYS_STORE_API_KEY, "
                      "else the key saved at subscribe)."),
]


def _publication_lines(pubs: list[dict[str, Any]]) -> list[str]:
    if not pubs:
        return ["no publications"]
    lines = []
    for p in pubs:
        mode = "live" if p["until"] is None else f"pinned at {p['until']}"
        lines.append(f"{p['name']}  clock {p['clock']}  {mode}  by {p['published_by']}  "
                     f"{p['description']}")
    return lines


@store_app.command("publish")
def store_publish(
    cube: Annotated[str, typer.Argument(help="Cube to publish.")],
    until: Annotated[int | None, typer.Option(help="Publish the cube as of this clock "
                                              "(a fixed version).")] = None,
    description: str = "",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a cube of this installation (served by `memosys serve`)."""
    from memosys.infra.store import MemStore

    with runtime(home) as mos:
        assert mos is not None
        pub = MemStore(mos).publish(cube, until=until, description=description).as_dict()
        _emit(as_json, pub, [f"published {pub['name']} (clock {pub['clock']})"])


@store_app.command("unpublish")
def store_unpublish(name: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Stop publishing: further pulls are refused."""
    from memosys.infra.store import MemStore

    with runtime(home) as mos:
        assert mos is not None
        pub = MemStore(mos).unpublish(name).as_dict()
        _emit(as_json, pub, [f"unpublished {pub['name']}"])


@store_app.command("list")
def store_list(
    url: Annotated[str | None, typer.Option("--url", help="List another service's "
                                            "publications (default: this installation's "
                                            "publications and subscriptions).")] = None,
    api_key: KeyOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publications (of this installation or of a remote service) and subscriptions."""
    from memosys.infra.store import MemStore, StoreClient, subscriptions

    if url is not None:
        with guarded(), StoreClient(url, api_key) as client:
            pubs = client.publications()
            _emit(as_json, {"publications": pubs}, _publication_lines(pubs))
        return
    with runtime(home) as mos:
        assert mos is not None
        pubs = [p.as_dict() for p in MemStore(mos).publications()]
        subs = [asdict(s) for s in subscriptions(mos)]
        _emit(as_json, {"publications": pubs, "subscriptions": subs},
              _publication_lines(pubs) + [
                  f"subscribed: {s['cube']} <- {s['url']} {s['publication']} "
                  f"(remote clock {s['remote_clock']})" for s in subs])


@store_app.command("subscribe")
def store_subscribe(
    url: Annotated[str, typer.Argument(help="The publishing service, e.g. "
                                       "http://host:8000")],
    name: Annotated[str, typer.Argument(help="The publication.")],
    as_name: Annotated[str | None, typer.Option("--as", help="Local cube name.")] = None,
    api_key: KeyOpt = None,
    save_key: Annotated[bool, typer.Option("--save-key/--no-save-key", help="Keep the key "
                                           "(0600 file in the home) for later pulls.")] = True,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Subscribe to a publication and pull it whole into a new local cube."""
    from memosys.infra.store import subscribe

    with runtime(home) as mos:
        assert mos is not None
        report = subscribe(mos, url, name, api_key, as_name=as_name, save_key=save_key)
        _emit(as_json, asdict(report), [
            f"subscribed {report.cube} to {name} at {url}: {report.memories_added} memories, "
            f"{report.versions_added} versions (remote clock {report.source_clock})",
            *report.messages])


@store_app.command("pull")
def store_pull(
    cube: Annotated[str, typer.Argument(help="A subscribed local cube.")],
    api_key: KeyOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the versions published since the last pull."""
    from memosys.infra.store import pull

    with runtime(home) as mos:
        assert mos is not None
        report = pull(mos, cube, api_key=api_key)
        _emit(as_json, asdict(report), [
            f"pulled {report.cube}: {report.memories_added} added, {report.memories_updated} "
            f"updated, {report.versions_added} versions, {report.pruned} removed "
            f"(remote clock {report.source_clock})", *report.messages])


def bench_exchange(
    n: Annotated[int, typer.Option("--n", help="Memories in the cube.")] = 2000,
    embedder: Annotated[str, typer.Option(help="Embedder spec.")] = "minilm",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the "
                                                   "numbers to this file.")] = None,
) -> None:
    """Export, verify and import speed of a cube archive (docs/cube-format.md)."""
    from memosys.bench.exchange import main

    with guarded():
        main(n, embedder, json_path, out)


def register(app: typer.Typer, bench_app: typer.Typer | None = None) -> None:
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
    app.command("verify")(verify_cmd)
    app.command("keygen")(keygen_cmd)
    app.add_typer(store_app, name="store")
    if bench_app is not None:
        bench_app.command("exchange")(bench_exchange)
