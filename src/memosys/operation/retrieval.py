"""MemOperator: hybrid retrieval — BM25 and dense candidates, fused, then re-scored with
query analysis, conversational context, keyword expansion and a feature-based reranker.

The pipeline (each stage switchable in `RetrievalConfig`; see docs/retrieval.md for the
measured effect of each):

1. **candidates**: BM25 (`vault.search_text`) and dense (`vault.search_vector`), `depth`
   each; with an explicit time in the query ("in May 2023") both are also run inside that
   event-time window so evidence from then enters the pool even when it matches weakly.
   Synthesised memories (profiles, topic summaries: consolidation) have a lane of their
   own: they restate many memories at once, so in the shared lists they would take the
   slots of what they summarise and move the scale fusion normalises by. They are fetched
   beyond `depth`, scored on the other memories' scale and never counted in it, so
   consolidating a cube does not reorder the memories it summarised.
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
from memosys.operation.consolidate_plan import quoted_sources
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

STAGES = ("tuned_fusion", "query_analysis", "derived_keys", "context", "expansion", "rerank")
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
    # derived memories as extra keys of their sources
    derived_keys: bool = False
    key_weight: float = 1.0
    """Share of a derived memory's score that its sources receive."""
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
    """Weight of log(1 + content words) of a conversation turn: informative turns are
    longer."""
    length_cap: int = 30
    """Content words from which the length prior stops growing."""
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
"""What a memory outside the conversation index (not yet synced) is taken to be."""
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
class Candidate:
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


class Stage(Protocol):
    """One step of the pipeline: reads and updates the `SearchRun` in place.

    `HybridRetriever.stages` runs them in order; `insert_stage` adds one. A stage that
    brings in more candidates (graph expansion, say) goes before "context", so that the
    later stages score its candidates like any other; it adds them with
    `run.add_candidate(item_id, base, pooled=False)` (not found by a filtered search, so
    the filter is checked before they are returned)."""

    name: str

    def enabled(self, config: RetrievalConfig) -> bool: ...

    def __call__(self, run: SearchRun) -> None: ...


@dataclass
class SearchRun:
    """The state of one search as it passes through the stages."""

    retriever: HybridRetriever
    query: str
    flt: ItemFilter
    top_k: int
    config: RetrievalConfig
    contexts: dict[str, CubeContext] = field(default_factory=dict)
    """Conversation structure of each searched cube."""
    qa: QueryAnalysis = field(default_factory=lambda: QueryAnalysis(""))
    qvec: np.ndarray | None = None
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)
    """Event-time windows the query names (extended by the grace period)."""
    lists: dict[str, tuple[dict[str, float], bool]] = field(default_factory=dict)
    """Raw scores per retriever ("bm25", "vector") and whether the list was cut at depth."""
    aggregate_lists: dict[str, dict[str, float]] = field(default_factory=dict)
    """Raw scores of the synthesised memories found, per retriever (their own lane)."""
    ranks: dict[str, dict[str, int]] = field(default_factory=dict)
    base: dict[str, float] = field(default_factory=dict)
    """Fused score per candidate (0 = found by no retriever)."""
    pool: dict[str, Candidate] = field(default_factory=dict)

    def candidate(self, item_id: str, *, pooled: bool) -> Candidate:
        """A new candidate for `item_id` with what the conversation index knows of it."""
        for ctx in self.contexts.values():
            turn = ctx.turns.get(item_id)
            if turn is not None:
                return Candidate(item_id, turn, ctx, pooled)
        return Candidate(item_id, _NO_TURN, None, pooled)

    def add_candidate(self, item_id: str, base: float = 0.0, *,
                      pooled: bool = False) -> Candidate:
        """Put a memory in the pool (kept as is if already there)."""
        cand = self.pool.get(item_id)
        if cand is None:
            cand = self.pool[item_id] = self.candidate(item_id, pooled=pooled)
            cand.base = base
        return cand


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
        self.stages: list[Stage] = default_stages()
        """The pipeline, in order (see `Stage`)."""

    def insert_stage(self, stage: Stage, *, before: str = "context") -> None:
        """Add a stage before the named one (default: before "context", the place for a
        stage that adds candidates)."""
        names = [s.name for s in self.stages]
        if stage.name in names:
            raise ValueError(f"a stage named {stage.name!r} is already in the pipeline")
        if before not in names:
            raise ValueError(f"no stage {before!r}; stages: {names}")
        self.stages.insert(names.index(before), stage)

    def search(self, query: str, flt: ItemFilter, top_k: int) -> list[SearchHit]:
        run = SearchRun(self, query, flt, top_k, self.config)
        for stage in self.stages:
            if stage.enabled(run.config):
                stage(run)
        chosen, items = self._collapsed(run, flt, top_k)
        hits = []
        for cand in chosen:
            item = items.get(cand.item_id)
            if item is None:
                continue
            scores = {k: found[cand.item_id] for k in ("bm25", "vector")
                      for found in (run.lists.get(k, ({}, False))[0],
                                    run.aggregate_lists.get(k, {}))
                      if cand.item_id in found}
            scores.update({k: round(v, 6) for k, v in cand.parts.items() if v})
            hits.append(SearchHit(
                item, cand.score,
                {k: r[cand.item_id] for k, r in run.ranks.items() if cand.item_id in r},
                scores,
            ))
        return hits

    def _collapsed(self, run: SearchRun, flt: ItemFilter, top_k: int,
                   ) -> tuple[list[Candidate], dict[str, MemoryItem]]:
        """The top_k candidates and their memories, without redundant syntheses: a
        synthesised memory ranked below a memory it quotes word for word repeats what the
        results already hold where the query matched, so it gives its slot to the next
        candidate. A synthesis stays when it is the best way in: above all it quotes."""
        wanted, dropped = top_k, set()
        for _ in range(4):  # each round frees slots; a few rounds settle it
            chosen = [c for c in self._select(run.pool, flt, wanted)
                      if c.item_id not in dropped]
            items = self.vault.get_many([c.item_id for c in chosen])
            ranks = {c.item_id: n for n, c in enumerate(chosen)}
            for cand in chosen:
                if cand.turn.aggregate and cand.item_id in items and any(
                        ranks[i] < ranks[cand.item_id]
                        for i in quoted_sources(items[cand.item_id], items)):
                    dropped.add(cand.item_id)
            kept = [c for c in chosen if c.item_id not in dropped]
            if len(kept) >= top_k or len(chosen) + len(dropped) < wanted:
                break
            wanted = top_k + len(dropped)
        return kept[:top_k], items

    def _select(self, pool: dict[str, Candidate], flt: ItemFilter,
                top_k: int) -> list[Candidate]:
        """The top_k best candidates; neighbours that joined through context are checked
        against the search filter first (they were not found by a filtered search)."""
        ranked = sorted(pool.values(), key=lambda c: (-c.score, c.item_id))
        chosen: list[Candidate] = []
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


class _Builtin:
    """A built-in stage, switched by the `RetrievalConfig` boolean of its name (the
    always-on steps have none)."""

    name = ""
    switch: str | None = None

    def enabled(self, config: RetrievalConfig) -> bool:
        return self.switch is None or bool(getattr(config, self.switch))


class AnalyseQuery(_Builtin):
    """Conversation structure of the searched cubes, and who/when the query names."""

    name = "analysis"

    def __call__(self, run: SearchRun) -> None:
        cfg, vault = run.config, run.retriever.vault
        if cfg.query_analysis or cfg.context or cfg.expansion or cfg.rerank \
                or cfg.derived_keys:
            for cube_id in run.flt.cube_ids or [c.id for c in vault.list_cubes()]:
                run.contexts[cube_id] = run.retriever.conversations.get(cube_id)
        run.qa = QueryAnalysis(run.query)
        if cfg.query_analysis:
            speakers = {s for ctx in run.contexts.values()
                        for s, n in list(ctx.speakers.items()) if n > 0}
            run.qa = analyze_query(run.query, speakers)
            run.windows = _windows(run.qa, cfg.time_grace_days)


class RetrieveCandidates(_Builtin):
    """BM25 and dense candidates, `depth` each; inside each named time window too."""

    name = "candidates"

    def __call__(self, run: SearchRun) -> None:
        cfg, r, flt = run.config, run.retriever, run.flt
        depth = max(cfg.depth if cfg.tuned_fusion else r.depth, run.top_k)
        aggregates = set().union(*(ctx.aggregates for ctx in run.contexts.values()))
        # Over-fetch by the aggregates there are (at most doubling the lists), so that
        # `depth` other memories remain once they are split off.
        fetch = depth + min(len(aggregates), depth)
        run.qvec = qvec = r.embedder.embed([run.query])[0]
        bm25 = r.vault.search_text(run.query, flt, fetch)
        dense = r.vault.search_vector(qvec, flt, fetch)
        run.ranks = {"bm25": _ranks(bm25), "vector": _ranks(dense)}
        for name, found in (("bm25", bm25), ("vector", dense)):
            own = [(i, v) for i, v in found if i not in aggregates][:depth]
            run.lists[name] = (dict(own), len(own) >= depth)
            run.aggregate_lists[name] = {i: v for i, v in found if i in aggregates}
        for start, end in run.windows:  # the same query inside the window: same scale
            inside = replace(flt, since=_max_dt(flt.since, start),
                             until=_min_dt(flt.until, end))
            if inside.since is not None and inside.until is not None \
                    and inside.since > inside.until:
                continue
            for name, found in (
                ("bm25", r.vault.search_text(run.query, inside, cfg.time_depth)),
                ("vector", r.vault.search_vector(qvec, inside, cfg.time_depth)),
            ):
                for item_id, score in found:
                    lane = run.aggregate_lists[name] if item_id in aggregates \
                        else run.lists[name][0]
                    lane.setdefault(item_id, score)


class Fuse(_Builtin):
    """One base score per candidate from the retrievers' scores; fills the pool."""

    name = "fusion"

    def __call__(self, run: SearchRun) -> None:
        run.base = fuse(run.lists, run.config, run.aggregate_lists)
        run.pool = {}
        for item_id, value in run.base.items():
            run.add_candidate(item_id, value, pooled=True)


class ExpandKeywords(_Builtin):
    """Pseudo-relevance feedback: the rarer words of the best few candidates, weighted by
    rank, become a second BM25 query whose scores are added to the first."""

    name = switch = "expansion"

    def __call__(self, run: SearchRun) -> None:
        cfg = run.config
        if not run.base:
            return
        best = sorted(run.base, key=lambda i: (-run.base[i], i))[: cfg.expansion_docs]
        feedback = run.retriever.vault.get_many(best)
        asked = set(query_terms(run.query))
        weights: dict[str, float] = {}
        for rank, item_id in enumerate(best):
            item = feedback.get(item_id)
            ctx = run.contexts.get(item.cube_id) if item is not None else None
            if item is None or ctx is None:
                continue
            for word in set(content_words(body_text(item))):
                if word in asked or ctx.doc_freq.get(word, 0) < 2:
                    continue  # a one-off word is no evidence of the topic
                weights[word] = weights.get(word, 0.0) + ctx.idf(word) / (rank + 1)
        terms = sorted(weights, key=lambda t: (-weights[t], t))[: cfg.expansion_terms]
        if not terms:
            return
        extra = {i: v for i, v in run.retriever.vault.search_text(
            " ".join(terms), run.flt, cfg.depth) if i not in run.aggregate_lists["bm25"]}
        scores, truncated = run.lists["bm25"]
        merged = dict(scores)
        for item_id, score in extra.items():
            merged[item_id] = merged.get(item_id, 0.0) + cfg.expansion_weight * score
        expanded = {"bm25": (merged, truncated or len(extra) >= cfg.depth),
                    "vector": run.lists["vector"]}
        run.base = fuse(expanded, cfg, run.aggregate_lists)
        for item_id, value in run.base.items():
            run.add_candidate(item_id, pooled=True).base = value


class FollowKeys(_Builtin):
    """Derived memories (facts extracted from turns, summaries of sessions or documents)
    are extra keys for what they came from: a matching key lifts its sources
    (`derived_from`), which join the pool, by `key_weight` x the key's score. The key
    itself stays a candidate. Off by default: with the rule extractor's facts it did not
    pay on LoCoMo (docs/retrieval.md)."""

    name = switch = "derived_keys"

    def __call__(self, run: SearchRun) -> None:
        weight = run.config.key_weight
        for cand in list(run.pool.values()):
            if not cand.turn.sources or cand.base <= 0:
                continue
            for source in cand.turn.sources:
                target = run.add_candidate(source, pooled=False)
                lift = weight * cand.base
                if lift > target.parts.get("key", 0.0):
                    target.parts["key"] = lift


class AddContext(_Builtin):
    """A conversation turn inherits part of the score of its neighbours and of its
    session's best turn; neighbours of candidates join as candidates themselves. Only
    turns are linked (`context.is_turn`), so facts and documents are left alone."""

    name = switch = "context"

    def __call__(self, run: SearchRun) -> None:
        cfg, pool = run.config, run.pool
        links: dict[str, tuple[str | None, str | None]] = {}
        for cand in list(pool.values()):
            if cand.ctx is None:
                continue
            prev, nxt = cand.ctx.neighbours(cand.item_id)
            links[cand.item_id] = (prev, nxt)
            for other in (prev, nxt):
                if other is not None and other not in pool:
                    joined = run.add_candidate(other, pooled=False)
                    links[other] = joined.ctx.neighbours(other) if joined.ctx \
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


class BoostNamed(_Builtin):
    """Memories of the one person the query names (spoken by them, or for a memory that
    is not a turn, naming them), and memories from a time the query names."""

    name = switch = "query_analysis"

    def __call__(self, run: SearchRun) -> None:
        cfg, qa = run.config, run.qa
        person = qa.persons[0] if len(qa.persons) == 1 else None
        first = person.split()[0].lower() if person else None
        spans = [(a.timestamp(), b.timestamp()) for a, b in run.windows]
        grace = cfg.time_grace_days * 86_400
        for cand in run.pool.values():
            turn = cand.turn
            if person is not None and (turn.speaker == person or first in turn.names):
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


class Rerank(_Builtin):
    """Linear feature scorer: an informativeness prior for conversation turns and
    answer-type matching ("when" questions prefer memories that say when).

    The prior ranks turns against turns: a short turn ("Bye!") is rarely evidence. It is
    log(1 + content words), capped at `length_cap` words and centred on the cube's mean
    turn, so a typical turn scores 0 like a memory that is not a turn (a fact, a document
    chunk), which gets none: cubes without chat are ranked on their match alone."""

    name = switch = "rerank"

    def __call__(self, run: SearchRun) -> None:
        cfg, qa = run.config, run.qa
        centre = {id(ctx): ctx.mean_log_length(cfg.length_cap)
                  for ctx in run.contexts.values()}
        for cand in run.pool.values():
            turn = cand.turn
            prior = 0.0
            if turn.turn:
                prior = cfg.length_weight * (math.log1p(min(turn.length, cfg.length_cap))
                                             - centre.get(id(cand.ctx), 0.0))
            if qa.asks_time and turn.has_time:
                prior += cfg.time_answer_weight
            cand.parts["prior"] = prior


def default_stages() -> list[Stage]:
    """The built-in pipeline, in order."""
    return [AnalyseQuery(), RetrieveCandidates(), Fuse(), ExpandKeywords(), FollowKeys(),
            AddContext(), BoostNamed(), Rerank()]


def fuse(lists: dict[str, tuple[dict[str, float], bool]],
         config: RetrievalConfig,
         aggregates: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Fused score per candidate, shifted so that a memory no retriever found scores 0
    (the context stage relies on that for neighbours outside the pool).

    `aggregates` (synthesised memories, per retriever) are scored on the scale of `lists`
    and take no part in setting it."""
    aggregates = aggregates or {}
    if not config.tuned_fusion and any(aggregates.values()):
        # Rank fusion has no scale to share: the aggregates rejoin the lists they came from.
        lists = {name: ({**scores, **aggregates.get(name, {})}, truncated)
                 for name, (scores, truncated) in lists.items()}
        aggregates = {}
    ids = list(dict.fromkeys(i for scores, _ in lists.values() for i in scores))
    extra = [i for found in aggregates.values() for i in found if i not in ids]
    ids.extend(dict.fromkeys(extra))
    if not ids:
        return {}
    if not config.tuned_fusion:
        fused = dict.fromkeys(ids, 0.0)
        for scores, _ in lists.values():
            for rank, item_id in enumerate(sorted(scores, key=lambda i: -scores[i]), 1):
                fused[item_id] += 1.0 / (RRF_K + rank)
        if not (config.query_analysis or config.context or config.rerank):
            return fused  # the plain RRF pipeline, scores as before
        # Later stages add boosts in standard-deviation units: rescale to match.
        scale = float(np.std(list(fused.values()))) or 1.0
        return {i: v / scale for i, v in fused.items()}
    weights = {"bm25": config.bm25_weight, "vector": 1 - config.bm25_weight}
    fused = dict.fromkeys(ids, 0.0)
    for name, (scores, truncated) in lists.items():
        values = np.fromiter(scores.values(), dtype=float, count=len(scores))
        if values.size == 0:  # only aggregates matched: they set the scale themselves
            scores = aggregates.get(name, {})
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
        own = aggregates.get(name, {})
        for item_id in ids:
            # An aggregate below the cut counts as not found, like a memory past `depth`.
            value = max(own[item_id], missing) if item_id in own \
                else scores.get(item_id, missing)
            fused[item_id] += w * (value - missing) / std
    return fused


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


__all__ = [
    "Candidate", "HybridRetriever", "RetrievalConfig", "STAGES", "SearchHit", "SearchRun",
    "Stage", "TimeRange", "default_stages", "fuse",
]
