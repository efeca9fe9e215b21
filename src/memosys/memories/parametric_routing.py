"""Query-relevance routing: attach an adapter only to requests near what it holds.

An always-on adapter changes some answers to unrelated questions (see docs/parametric.md,
"Forgetting"). Routing keeps those requests on the base weights: a request gets an adapter
only when its query is close, in the embedder's space, to one of the adapter's *keys* - the
texts of its source memories and the questions it was trained on.

The threshold is calibrated per adapter, never on evaluation questions: ``own`` is the lowest
similarity any of the adapter's training questions has to the source memories (how far a
related question may be), ``general`` the highest similarity any general replay prompt
(:data:`~memosys.memories.parametric_data.REPLAY_PROMPTS`, unrelated by construction) has to
the keys. The threshold is their midpoint when they separate, else ``own`` (recall first);
``floor`` bounds it from below.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memosys.memories.parametric_data import REPLAY_PROMPTS, parse_fact, questions_for

if TYPE_CHECKING:
    import numpy as np

    from memosys.memories.parametric_records import AdapterRecord
    from memosys.models.embed import Embedder
    from memosys.types import MemoryItem

__all__ = ["AdapterRouter", "RouteKeys"]

FLOOR = 0.3
"""No adapter is attached to a query less similar than this to all its keys."""


@dataclass(frozen=True)
class RouteKeys:
    keys: np.ndarray
    """L2-normalised rows: source texts and training questions."""
    threshold: float
    own: float
    general: float

    def score(self, query: np.ndarray) -> float:
        return float((self.keys @ query).max())


class AdapterRouter:
    """Routing keys per adapter (computed once per process and adapter id)."""

    def __init__(self, embedder: Embedder, floor: float = FLOOR) -> None:
        self.embedder = embedder
        self.floor = floor
        self._keys: dict[str, RouteKeys] = {}
        self._general: np.ndarray | None = None
        self._lock = threading.Lock()

    def keys_for(self, record: AdapterRecord, sources: Sequence[MemoryItem]) -> RouteKeys:
        with self._lock:
            found = self._keys.get(record.id)
        if found is not None:
            return found
        texts = [" ".join(s.text.split()) for s in sources]
        questions = [q for s in sources for q, _ in questions_for(parse_fact(s.text))]
        memory = self.embedder.embed(texts)
        asked = self.embedder.embed(questions)
        with self._lock:
            if self._general is None:
                self._general = self.embedder.embed(list(REPLAY_PROMPTS))
            general_rows = self._general
        import numpy as np

        keys = np.concatenate([memory, asked]) if len(questions) else memory
        own = float((asked @ memory.T).max(axis=1).min()) if len(questions) else 1.0
        general = float((general_rows @ keys.T).max())
        threshold = (own + general) / 2 if own > general else own
        found = RouteKeys(keys, max(self.floor, threshold), own, general)
        with self._lock:
            self._keys[record.id] = found
        return found

    def embed_query(self, query: str) -> np.ndarray:
        return self.embedder.embed([query])[0]
