"""Settings: defaults < `<home>/config.toml` < environment < explicit arguments."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from memosys.errors import ValidationError

_ENV = {
    "database_url": "MEMOSYS_DATABASE_URL",
    "embedder": "MEMOSYS_EMBEDDER",
    "openai_base_url": "MEMOSYS_OPENAI_BASE_URL",
    "openai_api_key": "MEMOSYS_OPENAI_API_KEY",
    "ann_threshold": "MEMOSYS_ANN_THRESHOLD",
}


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None = None
    """None: the embedded SQLite file `<home>/memosys.db`."""
    embedder: str = "minilm-l6-v2"
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    ann_threshold: int = 20_000
    """Vector count per cube from which an HNSW index replaces exact search."""

    @property
    def sqlite_path(self) -> Path:
        url = self.database_url
        if url is None:
            return self.home / "memosys.db"
        if url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite:///")).expanduser()
        raise ValidationError(f"unsupported database URL {url!r} (expected sqlite:///PATH)")

    @classmethod
    def load(cls, home: str | Path | None = None, **overrides: Any) -> Settings:
        root = Path(home or os.environ.get("MEMOSYS_HOME") or "~/.memosys").expanduser()
        values: dict[str, Any] = {}
        config_file = root / "config.toml"
        if config_file.exists():
            try:
                values.update(tomllib.loads(config_file.read_text()))
            except tomllib.TOMLDecodeError as exc:
                raise ValidationError(f"{config_file}: {exc}") from None
        for name, var in _ENV.items():
            if os.environ.get(var):
                values[name] = os.environ[var]
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)} - {"home"}
        unknown = set(values) - known
        if unknown:
            raise ValidationError(
                f"unknown setting(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        settings = cls(home=root)
        try:
            if "ann_threshold" in values:
                values["ann_threshold"] = int(values["ann_threshold"])
        except ValueError:
            raise ValidationError("ann_threshold must be an integer") from None
        return replace(settings, **values)
