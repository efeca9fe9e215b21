"""`memosys mcp`: serve the Memory API to MCP clients (docs/mcp.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from memosys.errors import ValidationError
from memosys.interface.cli_common import HomeOpt, acting, err, guarded
from memosys.system import MemOS


def mcp_command(
    transport: Annotated[str, typer.Option(help="stdio (for a client that launches the "
                                           "server) or http (streamable HTTP).")] = "stdio",
    host: Annotated[str, typer.Option(help="http: address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="http: port.")] = 8765,
    path: Annotated[str, typer.Option(help="http: endpoint path.")] = "/mcp",
    home: HomeOpt = None,
) -> None:
    """Run the MCP server (tools: add, search, get, update, forget memories, chat, ...).

    stdout carries the protocol on stdio, so everything else goes to stderr. On stdio the
    tools act as the user of $MEMOSYS_API_KEY (as every command does), else as the local
    admin; over http each request brings its own key. Over http,
    with API keys configured every request needs `Authorization: Bearer <key>`; without,
    only loopback clients are served (as `memosys serve` does)."""
    if transport not in ("stdio", "http"):
        raise typer.BadParameter("--transport must be stdio or http")
    from memosys.interface.mcp import build_mcp_server
    from memosys.interface.mcp_http import http_app, serve_http
    from memosys.interface.rest_auth import KeyPresence, is_loopback

    with guarded(), MemOS.open(home) as mos:
        if transport == "stdio":
            build_mcp_server(acting(mos)).run("stdio")
            return
        if not path.startswith("/"):
            raise ValidationError("--path must start with '/'")
        keys = KeyPresence(mos)()
        if not keys and not is_loopback(host):
            raise ValidationError(
                f"refusing to serve {host} without API keys: create a key first, or "
                "bind 127.0.0.1 for local use")
        # As `memosys serve`: on loopback open until the first key exists, else keys.
        app = http_app(mos, open_access=None if is_loopback(host) else False, path=path,
                       host=host)
        mode = "API keys" if keys else "open (loopback only, no API keys configured)"
        err.print(f"memosys MCP on http://{host}:{port}{path} — auth: {mode}")
        serve_http(app, host, port)
