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
    "retrieval": "MEMOSYS_RETRIEVAL",
    "llm": "MEMOSYS_LLM",
    "llm_base_url": "MEMOSYS_LLM_BASE_URL",
    "llm_api_key": "MEMOSYS_LLM_API_KEY",
    "llm_cache_dir": "MEMOSYS_LLM_CACHE_DIR",
    "graph": "MEMOSYS_GRAPH",
    "graph_search": "MEMOSYS_GRAPH_SEARCH",
    "consolidate_every_s": "MEMOSYS_CONSOLIDATE_EVERY_S",
    "topics": "MEMOSYS_TOPICS",
    "topic_search": "MEMOSYS_TOPIC_SEARCH",
    "topic_threshold": "MEMOSYS_TOPIC_THRESHOLD",
    "webhooks": "MEMOSYS_WEBHOOKS",
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
    retrieval: str = "pipeline"
    """"pipeline": the full retrieval pipeline (fusion, query analysis, context, rerank;
    docs/retrieval.md). "hybrid": plain BM25 + dense fused by reciprocal rank.
    "conversational" is an older name for "pipeline"."""
    llm: str = "local"
    """Chat model: "local" (SmolLM2-135M-Instruct on CPU) or "openai:<model>"."""
    llm_base_url: str | None = None
    """OpenAI-compatible endpoint for an "openai:<model>" llm (None: OPENAI_BASE_URL or OpenAI)."""
    llm_api_key: str | None = None
    llm_cache_dir: Path | None = None
    """Where the local model's dequantized weights are cached (None: `<home>/models/...`)."""
    graph: bool = True
    """Keep the semantic graph (entities, relations) current as memories are written."""
    graph_search: bool = False
    """Add the graph stage to retrieval (docs/graph.md: measured, off by default)."""
    consolidate_every_s: float = 0.0
    """Queue a consolidation run for each changed cube this often, on the scheduler's
    worker (docs/consolidation.md); 0: only on demand."""
    topics: bool = True
    """Keep the topic index (cube -> topics -> memories) current as memories are written."""
    topic_search: bool = False
    """Add the topic stage to retrieval (docs/graph.md: measured, off by default)."""
    topic_threshold: float = 0.45
    """Cosine similarity to a topic's centroid a new memory needs to join it."""
    webhooks: bool = True
    """`memosys serve` runs the webhook dispatcher (docs/events.md)."""

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
        if "consolidate_every_s" in values:
            try:
                values["consolidate_every_s"] = float(values["consolidate_every_s"])
            except (TypeError, ValueError):
                raise ValidationError("consolidate_every_s must be a number") from None
            if values["consolidate_every_s"] < 0:
                raise ValidationError("consolidate_every_s must not be negative")
        if values.get("retrieval", "pipeline") not in ("pipeline", "hybrid", "conversational"):
            raise ValidationError("retrieval must be 'pipeline' or 'hybrid'")
        if "topic_threshold" in values:
            try:
                values["topic_threshold"] = float(values["topic_threshold"])
            except ValueError:
                raise ValidationError("topic_threshold must be a number") from None
            if not -1.0 <= values["topic_threshold"] <= 1.0:
                raise ValidationError("topic_threshold must be between -1 and 1")
        for flag in ("graph", "graph_search", "topics", "topic_search", "webhooks"):
            if flag in values:
                values[flag] = _flag(flag, values[flag])
        if values.get("llm_cache_dir") is not None:
            values["llm_cache_dir"] = Path(values["llm_cache_dir"]).expanduser()
        return replace(settings, **values)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValidationError(f"{name} must be on or off, got {value!r}")
