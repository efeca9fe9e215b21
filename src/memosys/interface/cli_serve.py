"""`memosys serve` (the REST service) and `memosys bench serve` (its load benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memosys.errors import ValidationError
from memosys.interface.cli_common import HomeOpt, err, guarded, out


def serve(
    host: Annotated[str, typer.Option(help="Address to bind. Without API keys configured "
                                      "only a loopback address is allowed.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8000,
    max_body: Annotated[int, typer.Option("--max-body", help="Request size limit in bytes.")]
    = 8 * 1024 * 1024,
    model_name: Annotated[str, typer.Option(help="Model id served at /v1.")] = "memosys",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    home: HomeOpt = None,
) -> None:
    """Run the REST service (OpenAPI at /docs, OpenAI-compatible chat at /v1)."""
    import uvicorn

    from memosys.interface.rest_auth import KeyPresence, is_loopback
    from memosys.interface.server import ServerConfig, create_app
    from memosys.system import MemOS

    with guarded(), MemOS.open(home) as mos:
        has_keys = KeyPresence(mos)()
        if not has_keys and not is_loopback(host):
            raise ValidationError(
                f"refusing to serve {host} without API keys: create one first (`memosys "
                "users create NAME`, `memosys keys create NAME`), or bind 127.0.0.1")
        if max_body < 1024:
            raise ValidationError("--max-body must be at least 1024 bytes")
        # open_access=None: open while there are no keys, API keys from the first one on
        config = ServerConfig(open_access=None if is_loopback(host) else False,
                              max_body_bytes=max_body, model_name=model_name)
        app = create_app(mos, config)
        if mos.settings.webhooks:
            mos.events.start_dispatcher()  # webhook delivery (docs/events.md)
        mode = "API keys" if has_keys else "open (loopback only, no API keys configured)"
        err.print(f"memosys serving on http://{host}:{port} — auth: {mode}; docs at /docs")
        uvicorn.run(app, host=host, port=port, log_level=log_level)


def bench_serve(
    duration: Annotated[float, typer.Option(help="Seconds of load.")] = 60.0,
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 16,
    write_ratio: Annotated[float, typer.Option(help="Share of requests that add a memory; "
                                               "the rest search.")] = 0.5,
    seed_memories: Annotated[int, typer.Option(help="Memories stored before the load.")]
    = 200,
    url: Annotated[str | None, typer.Option(help="Drive this running server instead of "
                                            "starting one (needs --api-key if it has keys).")]
    = None,
    api_key: Annotated[str | None, typer.Option(help="Key for --url.")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write results here.")]
    = None,
) -> None:
    """Concurrent clients mixing add and search against a server on loopback: throughput,
    p50/p99 latency, errors, and a check that every acknowledged write is stored."""
    from memosys.bench.serve import run_serve_bench

    if duration <= 0 or clients < 1 or not 0.0 <= write_ratio <= 1.0 or seed_memories < 0:
        raise typer.BadParameter("need duration > 0, clients >= 1, 0 <= write-ratio <= 1, "
                                 "seed-memories >= 0")
    with guarded():
        report = run_serve_bench(duration=duration, clients=clients, write_ratio=write_ratio,
                                 seed_memories=seed_memories, url=url, api_key=api_key,
                                 json_file=json_file, console=out)
    if report["lost_writes"] or report["errors"]:
        raise typer.Exit(1)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Called once from memosys.interface.cli."""
    app.command("serve")(serve)
    bench_app.command("serve")(bench_serve)
