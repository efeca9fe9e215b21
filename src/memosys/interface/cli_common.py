"""What every `memosys` command module shares: consoles, common options, JSON output, and
the runtime (opened, acting as `$MEMOSYS_API_KEY`'s user, typed errors turned into a message
and the error's stable exit code)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from memosys.errors import MemosysError
from memosys.system import MemOS

API_KEY_ENV = "MEMOSYS_API_KEY"

out = Console()
err = Console(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Installation home (default $MEMOSYS_HOME or ~/.memosys)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CubeOpt = Annotated[str, typer.Option("--cube", "-c", help="Cube name or id.")]


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n")


@contextmanager
def guarded() -> Iterator[None]:
    """A typed memosys error becomes one red line on stderr and its exit code."""
    try:
        yield
    except MemosysError as exc:
        err.print(f"[red]error[/red] ({exc.code}): {exc}")
        raise typer.Exit(exc.exit_code) from None


def acting(mos: MemOS) -> MemOS:
    """The runtime as the caller: the key in $MEMOSYS_API_KEY, else the local admin."""
    key = os.environ.get(API_KEY_ENV)
    return mos.as_actor(mos.authenticate(key)) if key else mos


@contextmanager
def runtime(home: Path | None) -> Iterator[MemOS]:
    """The runtime of every CLI command that needs one."""
    with guarded(), MemOS.open(home) as mos:
        yield acting(mos)
