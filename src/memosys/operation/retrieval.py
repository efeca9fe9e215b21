"""MemOperator: hybrid retrieval — BM25 and dense search fused by reciprocal rank.

Rank fusion instead of score mixing because BM25 and cosine scores live on unrelated
scales that shift with the corpus; ranks are comparable across both and across cubes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memosys.infra.vault.base import ItemFilter, Vault
from memosys.models.embed import Embedder
from memosys.types import MemoryItem

RRF_K = 60
"""The usual RRF constant: damps the difference between the first few ranks."""


@dataclass(frozen=True)
class SearchHit:
    item: MemoryItem
    score: float
    """Fused score: sum over retrievers of 1 / (RRF_K + rank)."""
    ranks: dict[str, int] = field(default_factory=dict)
    """1-based rank per retriever that found the item ("bm25", "vector")."""
    scores: dict[str, float] = field(default_factory=dict)
    """Raw score per retriever (BM25 higher-is-better, cosine)."""

    @property
    def provenance(self) -> dict[str, object]:
        src = self.item.source
        return {
            "cube_id": self.item.cube_id,
            "version": self.item.version,
            "user": src.user,
            "agent": src.agent,
            "session": src.session,
            "message_ids": list(src.message_ids),
            "document_uri": src.document_uri,
            "derived_from": list(self.item.derived_from),
        }


class HybridRetriever:
    def __init__(self, vault: Vault, embedder: Embedder, depth: int = 50) -> None:
        self.vault = vault
        self.embedder = embedder
        self.depth = depth
        """Candidates taken from each retriever before fusion (at least top_k)."""

    def search(self, query: str, flt: ItemFilter, top_k: int) -> list[SearchHit]:
        depth = max(self.depth, top_k)
        ranked = {
            "bm25": self.vault.search_text(query, flt, depth),
            "vector": self.vault.search_vector(self.embedder.embed([query])[0], flt, depth),
        }
        fused: dict[str, float] = {}
        ranks: dict[str, dict[str, int]] = {}
        scores: dict[str, dict[str, float]] = {}
        for name, results in ranked.items():
            for rank, (item_id, score) in enumerate(results, start=1):
                fused[item_id] = fused.get(item_id, 0.0) + 1.0 / (RRF_K + rank)
                ranks.setdefault(item_id, {})[name] = rank
                scores.setdefault(item_id, {})[name] = score
        best = sorted(fused, key=lambda i: (-fused[i], i))[:top_k]
        items = self.vault.get_many(best)
        return [
            SearchHit(items[i], fused[i], ranks[i], scores[i]) for i in best if i in items
        ]
