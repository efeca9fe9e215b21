"""`memosys mcp`: serve the Memory API to MCP clients (docs/mcp.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from memosys.errors import MemosysError, ValidationError
from memosys.system import MemOS

err = Console(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Installation home (default $MEMOSYS_HOME or ~/.memosys)."),
]


def mcp_command(
    transport: Annotated[str, typer.Option(help="stdio (for a client that launches the "
                                           "server) or http (streamable HTTP).")] = "stdio",
    host: Annotated[str, typer.Option(help="http: address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="http: port.")] = 8765,
    path: Annotated[str, typer.Option(help="http: endpoint path.")] = "/mcp",
    home: HomeOpt = None,
) -> None:
    """Run the MCP server (tools: add, search, get, update, forget memories, ...).

    stdout carries the protocol on stdio, so everything else goes to stderr."""
    if transport not in ("stdio", "http"):
        raise typer.BadParameter("--transport must be stdio or http")
    from memosys.interface.mcp import build_mcp_server, http_app, serve_http
    from memosys.interface.rest_auth import is_loopback

    try:
        with MemOS.open(home) as mos:
            if transport == "stdio":
                build_mcp_server(mos).run("stdio")
                return
            if not path.startswith("/"):
                raise ValidationError("--path must start with '/'")
            if not is_loopback(host):
                raise ValidationError(
                    f"refusing to serve {host} without API keys: create a key first, or "
                    "bind 127.0.0.1 for local use")
            app = http_app(mos, authenticate=None, path=path, host=host)
            err.print(f"memosys MCP on http://{host}:{port}{path} — auth: open (loopback "
                      "only, no API keys configured)")
            serve_http(app, host, port)
    except MemosysError as exc:
        err.print(f"[red]error[/red] ({exc.code}): {exc}")
        raise typer.Exit(exc.exit_code) from None
