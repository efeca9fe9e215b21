"""The web memory viewer: static files in `interface/ui/` served at `/ui` (docs/ui.md).

Plain HTML/CSS/JS, no build step and nothing fetched from elsewhere: the page talks only
to the REST API under `/api/v1` with the API key the user types in (kept in the browser's
localStorage). Version diffs are computed in the browser from `/memories/{id}/history`,
so the viewer needs no endpoint of its own."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).with_name("ui")
UI_PATH = "/ui"


def mount_ui(app: Starlette) -> None:
    """Serve the viewer at `/ui/` (`/ui` redirects there; index.html is the page)."""
    if not (UI_DIR / "index.html").is_file():  # a broken install, not a user error
        raise RuntimeError(f"memosys viewer files missing from {UI_DIR}")
    app.mount(UI_PATH, StaticFiles(directory=UI_DIR, html=True), name="ui")
