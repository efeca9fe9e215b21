"""A real webhook receiver on loopback for tests: a threading HTTP server that records
each POST (headers, raw body) and answers with the status `respond` picks."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A threading HTTP server; `respond(request_number) -> status` decides each answer."""

    def __init__(self, respond: Callable[[int], int] = lambda _n: 200) -> None:
        self.respond = respond
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.got = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append((dict(self.headers.items()), body))
                    n = len(receiver.requests)
                    receiver.got.notify_all()
                code = receiver.respond(n)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.requests) >= n, timeout), \
                f"got {len(self.requests)} of {n} requests"
            return list(self.requests)

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) for _, b in self.requests]
