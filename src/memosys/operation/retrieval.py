"""MemOperator: hybrid retrieval — BM25 and dense candidates, fused, then re-scored with
query analysis, conversational context, keyword expansion and a feature-based reranker.

The pipeline (each stage switchable in `RetrievalConfig`; see docs/retrieval.md for the
measured effect of each):

1. **candidates**: BM25 (`vault.search_text`) and dense (`vault.search_vector`), `depth`
   each; with an explicit time in the query ("in May 2023") both are also run inside that
   event-time window so evidence from then enters the pool even when it matches weakly.
2. **fusion** (`tuned_fusion`): each retriever's scores are standardised over its own
   candidate list (z-scores) and mixed with a BM25 weight. Off: plain reciprocal-rank
   fusion (k=60, depth 50), the previous behaviour.
3. **expansion** (off by default: measured no gain on top of the other stages):
   pseudo-relevance feedback — the rarer words of the best few candidates form a second
   BM25 query whose scores are added to the first.
4. **context**: a turn inherits part of the score of the turn before it (a short answer
   replies to the question before it) and after it, and of the best turn of its session.
5. **query analysis**: turns spoken by the person the question names, and turns whose
   event time falls in a time the question names, are boosted.
6. **rerank**: a linear feature scorer — an informativeness prior (log content length) and
   answer-type matching (a "when" question prefers turns that say when).

Everything is LLM-free and works on what the vault already stores; the conversation
structure (sessions, neighbours, speakers) comes from `ConversationIndex`, an in-memory
cache kept current through the cube version clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np

from memosys.infra.vault.base import ItemFilter, Vault
from memosys.infra.vault.fts_query import query_terms
from memosys.models.embed import Embedder
from memosys.operation.context import (
    ConversationIndex,
    CubeContext,
    TurnInfo,
    body_text,
    content_words,
)
from memosys.operation.query import QueryAnalysis, TimeRange, analyze_query
from memosys.types import MemoryItem

RRF_K = 60
"""The usual RRF constant: damps the difference between the first few ranks."""

STAGES = ("tuned_fusion", "query_analysis", "context", "expansion", "rerank")
"""Switchable stages of `RetrievalConfig` (the booleans of the same names)."""


@dataclass(frozen=True)
class RetrievalConfig:
    """Knobs of the retrieval pipeline. Defaults are the best measured on LoCoMo dev
    (docs/retrieval.md); every stage can be switched off for ablation."""

    # candidates and fusion
    tuned_fusion: bool = True
    depth: int = 50
    """Candidates taken from each retriever (at least top_k)."""
    bm25_weight: float = 0.6
    """Share of BM25 in the fused score; the rest is dense."""
    # query analysis
    query_analysis: bool = True
    speaker_weight: float = 2.0
    """Boost for turns spoken by the one person the question names."""
    time_weight: float = 2.0
    """Boost for turns whose event time lies in a time the question names."""
    time_grace_days: float = 7.0
    """Events are talked about after they happen: a window extends this far past its end."""
    time_depth: int = 20
    """Extra candidates per retriever from inside the named time window."""
    # conversational context
    context: bool = True
    prev_weight: float = 0.5
    """Share of the previous turn's score a turn inherits."""
    next_weight: float = 0.3
    session_weight: float = 0.5
    """Share of the best score in the same session a turn inherits."""
    # keyword expansion (pseudo-relevance feedback)
    expansion: bool = False
    expansion_docs: int = 5
    expansion_terms: int = 10
    expansion_weight: float = 0.25
    # feature reranker
    rerank: bool = True
    length_weight: float = 1.25
    """Weight of log(1 + content words): informative turns are longer."""
    time_answer_weight: float = 1.5
    """Boost for turns with a time expression when the question asks "when"."""

    def without(self, *stages: str) -> RetrievalConfig:
        """This config with the named stages switched off."""
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {STAGES}")
        return replace(self, **{s: False for s in stages})

    @classmethod
    def baseline(cls) -> RetrievalConfig:
        """Every stage off: reciprocal-rank fusion of BM25 and dense, depth 50."""
        return cls().without(*STAGES)

    def knobs(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SearchHit:
    item: MemoryItem
    score: float
    """Final pipeline score (higher is better; comparable within one search only)."""
    ranks: dict[str, int] = field(default_factory=dict)
    """1-based rank per retriever that found the item ("bm25", "vector")."""
    scores: dict[str, float] = field(default_factory=dict)
    """Raw score per retriever (BM25 higher-is-better, cosine), plus the score parts of
    the later stages ("context", "speaker", "time", "prior") when they contributed."""

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


_NO_TURN = TurnInfo(None, None, 0.0, 0, False, 0)
_STD_FLOOR = 1e-9
_PRIOR_WEIGHT = 10
"""Pseudo-observations of a typical spread mixed into each list's standard deviation, so a
short candidate list (a small cube) does not turn tiny score differences into large ones."""
_COSINE_SPREAD = 0.1
"""Typical spread of cosine scores of a query against unrelated texts (sentence embedders)."""
_BM25_SPREAD = 2.0
"""Typical spread of BM25 scores (FTS5's idf, which both backends use: a word found in
every memory scores ~0, a rare word several points)."""


@dataclass
class _Candidate:
    """One memory under consideration and the score parts that explain its rank."""

    item_id: str
    turn: TurnInfo
    ctx: CubeContext | None
    pooled: bool = True
    """Found by a retriever, so it passed the filter; False: a neighbour added by context."""
    base: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.base + sum(self.parts.values())


class CandidateStage(Protocol):
    """An extra stage after fusion (e.g. the graph, `memosys.operation.graph_search`):
    scores to add, under part `name`, for memories it finds; each must pass `flt`."""

    name: str

    def expand(self, query: str, flt: ItemFilter, base: dict[str, float]) -> dict[str, float]:
        ...


class HybridRetriever:
    def __init__(
        self,
        vault: Vault,
        embedder: Embedder,
        depth: int = 50,
        config: RetrievalConfig | None = None,
    ) -> None:
        self.vault = vault
        self.embedder = embedder
        self.depth = depth
        """Candidates per retriever when tuned fusion is off (the plain RRF pipeline)."""
        self.config = config or RetrievalConfig()
        self.conversations = ConversationIndex(vault)
        self.stages: list[CandidateStage] = []
        """Extra candidate stages, run after fusion and before context (none by default)."""

    def search(self, query: str, flt: ItemFilter, top_k: int) -> list[SearchHit]:
        cfg = self.config
        contexts: dict[str, CubeContext] = {}
        if cfg.query_analysis or cfg.context or cfg.expansion or cfg.rerank:
            for cube_id in flt.cube_ids or [c.id for c in self.vault.list_cubes()]:
                contexts[cube_id] = self.conversations.get(cube_id)
        qa = QueryAnalysis(query)
        if cfg.query_analysis:
            speakers = {s for ctx in contexts.values() for s, n in list(ctx.speakers.items())
                        if n > 0}
            qa = analyze_query(query, speakers)

        # 1. candidates
        depth = max(cfg.depth if cfg.tuned_fusion else self.depth, top_k)
        qvec = self.embedder.embed([query])[0]
        bm25 = self.vault.search_text(query, flt, depth)
        dense = self.vault.search_vector(qvec, flt, depth)
        ranks = {"bm25": _ranks(bm25), "vector": _ranks(dense)}
        lists = {"bm25": (dict(bm25), len(bm25) >= depth),
                 "vector": (dict(dense), len(dense) >= depth)}
        windows = _windows(qa, cfg.time_grace_days) if cfg.query_analysis else []
        for start, end in windows:  # the same query inside the window: same score scale
            inside = replace(flt, since=_max_dt(flt.since, start),
                             until=_min_dt(flt.until, end))
            if inside.since is not None and inside.until is not None \
                    and inside.since > inside.until:
                continue
            for name, found in (
                ("bm25", self.vault.search_text(query, inside, cfg.time_depth)),
                ("vector", self.vault.search_vector(qvec, inside, cfg.time_depth)),
            ):
                for item_id, score in found:
                    lists[name][0].setdefault(item_id, score)

        # 2. fusion
        base = self._fuse(lists)
        # 3. keyword expansion
        if cfg.expansion and base:
            extra = self._expansion(query, base, flt, contexts)
            if extra:
                scores, truncated = lists["bm25"]
                merged = dict(scores)
                for item_id, score in extra.items():
                    merged[item_id] = merged.get(item_id, 0.0) + cfg.expansion_weight * score
                lists["bm25_expanded"] = (merged, truncated or len(extra) >= cfg.depth)
                base = self._fuse({"bm25": lists["bm25_expanded"], "vector": lists["vector"]})
        pool = {i: self._candidate(i, contexts, pooled=True) for i in base}
        for item_id, value in base.items():
            pool[item_id].base = value
        for stage in self.stages:
            for item_id, boost in stage.expand(query, flt, base).items():
                if item_id not in pool:
                    pool[item_id] = self._candidate(item_id, contexts, pooled=True)
                pool[item_id].parts[stage.name] = boost
        # 4.-6. context, query features, prior
        if cfg.context:
            self._add_context(pool, contexts)
        if cfg.query_analysis:
            self._add_query_features(pool, qa, windows)
        if cfg.rerank:
            self._add_prior(pool, qa)

        chosen = self._select(pool, flt, top_k)
        items = self.vault.get_many([c.item_id for c in chosen])
        hits = []
        for cand in chosen:
            item = items.get(cand.item_id)
            if item is None:
                continue
            scores = {k: lists[k][0][cand.item_id] for k in ("bm25", "vector")
                      if cand.item_id in lists[k][0]}
            scores.update({k: round(v, 6) for k, v in cand.parts.items() if v})
            hits.append(SearchHit(
                item, cand.score,
                {k: r[cand.item_id] for k, r in ranks.items() if cand.item_id in r},
                scores,
            ))
        return hits

    # --- stages -----------------------------------------------------------------------
    def _fuse(self, lists: dict[str, tuple[dict[str, float], bool]]) -> dict[str, float]:
        """Fused score per candidate, shifted so that a memory no retriever found scores 0
        (the context stage relies on that for neighbours outside the pool)."""
        ids = list(dict.fromkeys(i for scores, _ in lists.values() for i in scores))
        if not ids:
            return {}
        if not self.config.tuned_fusion:
            fused = dict.fromkeys(ids, 0.0)
            for scores, _ in lists.values():
                for rank, item_id in enumerate(sorted(scores, key=lambda i: -scores[i]), 1):
                    fused[item_id] += 1.0 / (RRF_K + rank)
            cfg = self.config
            if not (cfg.query_analysis or cfg.context or cfg.rerank):
                return fused  # the plain RRF pipeline, scores as before
            # Later stages add boosts in standard-deviation units: rescale to match.
            scale = float(np.std(list(fused.values()))) or 1.0
            return {i: v / scale for i, v in fused.items()}
        weights = {"bm25": self.config.bm25_weight, "vector": 1 - self.config.bm25_weight}
        fused = dict.fromkeys(ids, 0.0)
        for name, (scores, truncated) in lists.items():
            values = np.fromiter(scores.values(), dtype=float, count=len(scores))
            if values.size == 0:
                continue
            # Unseen memories score at most the last one seen if the list was cut at
            # `depth`, else they did not match at all (BM25 0; never happens for dense).
            missing = float(values.min()) if truncated or name != "bm25" else 0.0
            ref = values if truncated or name != "bm25" else np.append(values, 0.0)
            prior = _COSINE_SPREAD if name == "vector" else _BM25_SPREAD
            std = math.sqrt((ref.size * float(ref.var()) + _PRIOR_WEIGHT * prior**2)
                            / (ref.size + _PRIOR_WEIGHT))
            std = max(std, _STD_FLOOR)
            w = weights.get(name, weights["bm25"])
            for item_id in ids:
                value = scores.get(item_id, missing)
                fused[item_id] += w * (value - missing) / std
        return fused

    def _expansion(self, query: str, base: dict[str, float], flt: ItemFilter,
                   contexts: dict[str, CubeContext]) -> dict[str, float]:
        """Pseudo-relevance feedback: the rarer words of the best few candidates, weighted
        by rank, become a second BM25 query (scores of that query)."""
        cfg = self.config
        best = sorted(base, key=lambda i: (-base[i], i))[: cfg.expansion_docs]
        feedback = self.vault.get_many(best)
        asked = set(query_terms(query))
        weights: dict[str, float] = {}
        for rank, item_id in enumerate(best):
            item = feedback.get(item_id)
            ctx = contexts.get(item.cube_id) if item is not None else None
            if item is None or ctx is None:
                continue
            for word in set(content_words(body_text(item))):
                if word in asked or ctx.doc_freq.get(word, 0) < 2:
                    continue  # a one-off word is no evidence of the topic
                weights[word] = weights.get(word, 0.0) + ctx.idf(word) / (rank + 1)
        terms = sorted(weights, key=lambda t: (-weights[t], t))[: cfg.expansion_terms]
        if not terms:
            return {}
        return dict(self.vault.search_text(" ".join(terms), flt, cfg.depth))

    def _candidate(self, item_id: str, contexts: dict[str, CubeContext], *,
                   pooled: bool) -> _Candidate:
        for ctx in contexts.values():
            turn = ctx.turns.get(item_id)
            if turn is not None:
                return _Candidate(item_id, turn, ctx, pooled)
        return _Candidate(item_id, _NO_TURN, None, pooled)

    def _add_context(self, pool: dict[str, _Candidate],
                     contexts: dict[str, CubeContext]) -> None:
        """A turn inherits part of the score of its neighbours and of its session's best
        turn; neighbours of candidates join as candidates themselves."""
        cfg = self.config
        links: dict[str, tuple[str | None, str | None]] = {}
        for cand in list(pool.values()):
            if cand.ctx is None:
                continue
            prev, nxt = cand.ctx.neighbours(cand.item_id)
            links[cand.item_id] = (prev, nxt)
            for other in (prev, nxt):
                if other is not None and other not in pool:
                    pool[other] = self._candidate(other, contexts, pooled=False)
                    links[other] = pool[other].ctx.neighbours(other) if pool[other].ctx \
                        else (None, None)
        best: dict[tuple[int, str], float] = {}
        for cand in pool.values():
            if cand.turn.session is not None and cand.pooled:
                key = (id(cand.ctx), cand.turn.session)
                best[key] = max(best.get(key, 0.0), cand.base)
        for cand in pool.values():
            prev, nxt = links.get(cand.item_id, (None, None))
            inherited = 0.0
            if prev is not None and prev in pool:
                inherited += cfg.prev_weight * pool[prev].base
            if nxt is not None and nxt in pool:
                inherited += cfg.next_weight * pool[nxt].base
            cand.parts["context"] = inherited
            if cand.turn.session is not None:
                cand.parts["session"] = cfg.session_weight * best.get(
                    (id(cand.ctx), cand.turn.session), 0.0)

    def _add_query_features(self, pool: dict[str, _Candidate], qa: QueryAnalysis,
                            windows: list[tuple[datetime, datetime]]) -> None:
        cfg = self.config
        person = qa.persons[0] if len(qa.persons) == 1 else None
        spans = [(a.timestamp(), b.timestamp()) for a, b in windows]
        grace = cfg.time_grace_days * 86_400
        for cand in pool.values():
            turn = cand.turn
            if person is not None and turn.speaker == person:
                cand.parts["speaker"] = cfg.speaker_weight
            if turn is _NO_TURN:
                continue
            in_time = any(a <= turn.event_ts <= b for a, b in spans)
            if not in_time and qa.months:
                at = datetime.fromtimestamp(turn.event_ts, UTC)
                before = datetime.fromtimestamp(turn.event_ts - grace, UTC)
                in_time = at.month in qa.months or before.month in qa.months
            if in_time:
                cand.parts["time"] = cfg.time_weight

    def _add_prior(self, pool: dict[str, _Candidate], qa: QueryAnalysis) -> None:
        cfg = self.config
        for cand in pool.values():
            prior = cfg.length_weight * math.log1p(cand.turn.length)
            if qa.asks_time and cand.turn.has_time:
                prior += cfg.time_answer_weight
            cand.parts["prior"] = prior

    def _select(self, pool: dict[str, _Candidate], flt: ItemFilter,
                top_k: int) -> list[_Candidate]:
        """The top_k best candidates; neighbours that joined through context are checked
        against the search filter first (they were not found by a filtered search)."""
        ranked = sorted(pool.values(), key=lambda c: (-c.score, c.item_id))
        chosen: list[_Candidate] = []
        start = 0
        while len(chosen) < top_k and start < len(ranked):
            window = ranked[start : start + 2 * top_k]
            start += len(window)
            unchecked = [c.item_id for c in window if not c.pooled]
            allowed: set[str] = set()
            if unchecked and _only_cube_and_state(flt):
                # What the filter asks is known here (the conversation index is synced).
                allowed = {c.item_id for c in window if not c.pooled and c.ctx is not None
                           and (not flt.states or c.turn.state in flt.states)}
            elif unchecked:
                ids = tuple(i for i in unchecked if not flt.ids or i in flt.ids)
                if ids:
                    allowed = {i.id for i in self.vault.list_items(
                        replace(flt, ids=ids), limit=len(ids))}
            for cand in window:
                if cand.pooled or cand.item_id in allowed:
                    chosen.append(cand)
                    if len(chosen) == top_k:
                        break
        return chosen


def _only_cube_and_state(flt: ItemFilter) -> bool:
    """The filter restricts nothing but cubes and lifecycle states."""
    return flt == ItemFilter(cube_ids=flt.cube_ids, states=flt.states)


def _ranks(results: Sequence[tuple[str, float]]) -> dict[str, int]:
    return {item_id: rank for rank, (item_id, _) in enumerate(results, start=1)}


def _windows(qa: QueryAnalysis, grace_days: float) -> list[tuple[datetime, datetime]]:
    """Event-time windows for the time ranges the query names (extended past their end)."""
    grace = timedelta(days=grace_days)
    return [(r.start, r.end + grace) for r in qa.time_ranges[:3]]


def _max_dt(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else max(a, b)


def _min_dt(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else min(a, b)


__all__ = ["HybridRetriever", "RetrievalConfig", "STAGES", "SearchHit", "TimeRange"]
