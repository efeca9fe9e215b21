"""MemScheduler: which memories enter each model call, and in which form.

Per chat call (:meth:`MemScheduler.plan`):

1. **Stable set** — memories that are always relevant: the cubes' ``persona`` and ``rule``
   memories (pinned), plus memories the scheduler *promoted* (see below). They form the
   stable sections of the system message (:mod:`memosys.operation.prompt`), up to
   ``stable_token_budget`` tokens.
2. **Form of the stable set** — with the local model: ``activation`` when a KV cache of exactly
   this prefix (same tokens, same source versions, same model) exists; otherwise the same text
   goes in as ``plaintext`` and a cache build is queued, so the request never waits for a build
   (the output is the same either way; only time-to-first-token differs). With a remote model:
   ``plaintext`` (activation caches only exist for the local model).
3. **Retrieved** — hybrid search for the query (through the runtime's public ``search``, so a
   governed view's permissions apply); hits go in as ``plaintext`` by rank until
   ``retrieved_token_budget`` tokens. Duplicates of the conversation are skipped.

After the answer (:meth:`after_answer`) every memory in the prompt gets
``record_access(used_in_answer=True)``. A retrieved memory used in ``promote_after`` answers
without changing is **promoted** into the stable set (and so into the activation cache); a
promoted memory is **demoted** when it changes (new version, deleted, purged) or **cools**
(its decayed usage heat falls under ``cool_below``; it is re-heated only when a search finds
it relevant again). Usage tracking lives in the scheduler (per process); the vault's stats
keep the durable counts.

Every decision is recorded with its reason: :meth:`recent_decisions` returns the newest
:class:`SchedulingRecord` objects (``.as_dict()`` is JSON-ready), and ``MemOS.chat`` returns
the call's decisions in its result.

Background work goes through the vault's durable job queue: ``activation_build`` jobs (and
the MemReader's ``extract`` jobs written by chat) are run by a worker thread started on first
use (``background=True``) or by :meth:`run_pending` (memosys.operation.scheduler_worker).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from memosys.errors import ActivationError, NotFoundError
from memosys.memories.activation import (
    ACTIVATION_TAG,
    ActivationStore,
    LoadedActivation,
    SourceRef,
)
from memosys.memories.parametric_schedule import parametric_forms
from memosys.operation.prompt import STABLE_SECTIONS, render_memory, section_of, stable_text
from memosys.operation.scheduler_worker import BUILD_JOB, BackgroundWork, stable_levels
from memosys.types import MemoryItem, MemoryKind, MemoryState, MemoryType, new_id

if TYPE_CHECKING:
    from memosys.models.adapters import AdapterSelection
    from memosys.models.local_llm import LocalLLM
    from memosys.operation.retrieval import SearchHit
    from memosys.system import MemOS

log = logging.getLogger(__name__)

Form = Literal["activation", "plaintext", "parametric", "skipped"]
SWEEP_EVERY_S = 5.0


@dataclass(frozen=True)
class SchedulerConfig:
    top_k: int = 5
    """Search hits considered per call."""
    retrieved_token_budget: int = 768
    """Prompt tokens for query-specific (retrieved) memories."""
    stable_token_budget: int = 2048
    """Prompt tokens for the stable set (pinned + promoted memories)."""
    max_pinned: int = 64
    pinned_types: tuple[MemoryType, ...] = (MemoryType.PERSONA, MemoryType.RULE)
    relevance_floor: float = 0.3
    """A hit counts as relevant to the query when BM25 matched it or its embedding cosine is
    at least this; irrelevant hits (a small cube returns everything) stay out of the prompt
    and do not re-heat promoted memories."""
    promote_after: int = 3
    """Answers a retrieved memory must be used in, unchanged, to be promoted."""
    heat_half_life_s: float = 3600.0
    cool_below: float = 0.5
    """A promoted memory whose decayed heat drops below this is demoted."""
    background: bool = True
    """Run queued jobs on a worker thread (False: only :meth:`MemScheduler.run_pending`)."""
    budget_mb: float = 1024.0
    """Disk budget of activation caches (all cubes)."""
    memory_mb: float = 512.0
    history: int = 500
    skill_token_budget: int = 384
    """Prompt tokens for skills found for the query (the procedure block; docs/skills.md)."""
    skills_top_k: int = 1
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class MemoryDecision:
    """What the scheduler did with one memory in one call, and why."""

    memory_id: str
    cube_id: str
    version: int
    memory_type: str
    form: Form
    section: str
    """persona | rules | background (stable set) or retrieved."""
    reason: str
    tokens: int = 0
    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SchedulingRecord:
    """One call's schedule: the memories, their forms, the cache used and what changed."""

    id: str
    at: str
    query: str
    cube_ids: list[str]
    model: str
    decisions: list[MemoryDecision] = field(default_factory=list)
    activation: dict[str, Any] | None = None
    """The cache used (key, record_id, tokens, source: memory | disk), or None."""
    events: list[str] = field(default_factory=list)
    """Promotions, demotions, queued builds, refused caches."""
    prompt_tokens: int | None = None
    cached_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decisions"] = [d.as_dict() for d in self.decisions]
        return out


@dataclass
class Plan:
    """What :meth:`MemScheduler.plan` hands to the chat: prompt parts plus the record."""

    record: SchedulingRecord
    stable_text: str
    retrieved: list[MemoryItem]
    stable_items: list[MemoryItem]
    activation: LoadedActivation | None = None
    adapters: AdapterSelection | None = None
    """LoRA adapters holding memories given form ``parametric`` (memories.parametric_schedule)."""


@dataclass
class _Usage:
    cube_id: str
    version: int
    uses: int = 0
    heat: float = 0.0
    last_used: float = 0.0
    promoted: bool = False

    def heat_at(self, now: float, half_life: float) -> float:
        return self.heat * math.pow(0.5, max(0.0, now - self.last_used) / half_life)


class MemScheduler(BackgroundWork):
    """Shared by a runtime and its views; thread-safe."""

    def __init__(self, mos: MemOS, config: SchedulerConfig | None = None) -> None:
        self.mos = mos
        self.config = config or SchedulerConfig()
        self._lock = threading.RLock()
        self._usage: dict[str, _Usage] = {}
        self._history: deque[SchedulingRecord] = deque(maxlen=self.config.history)
        self._pending: dict[str, str] = {}  # cache key -> job id
        self._swept: dict[str, float] = {}  # cube id -> monotonic time of the last sweep
        self._store: ActivationStore | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._consolidated: dict[str, tuple[float, int, str]] = {}  # the consolidation schedule

    # --- activation store ---------------------------------------------------------------
    def activation_store(self, llm: LocalLLM) -> ActivationStore:
        """The KV-cache store for the bound local model (created on first use)."""
        with self._lock:
            if self._store is None or self._store.llm is not llm:
                self._store = ActivationStore(self.mos, llm, budget_mb=self.config.budget_mb,
                                              memory_mb=self.config.memory_mb)
            return self._store

    # --- decisions ------------------------------------------------------------------------
    def recent_decisions(self, limit: int = 20) -> list[SchedulingRecord]:
        """The newest scheduling records first (``.as_dict()`` for JSON)."""
        with self._lock:
            items = list(self._history)
        return list(reversed(items))[: max(0, int(limit))]

    def promoted(self) -> dict[str, int]:
        """Promoted memory ids and the version they were promoted at."""
        with self._lock:
            return {i: u.version for i, u in self._usage.items() if u.promoted}

    # --- planning -------------------------------------------------------------------------
    def plan(
        self,
        view: MemOS,
        query: str,
        cube_ids: Sequence[str],
        *,
        base_system: str,
        model: str,
        count_tokens: Callable[[str], int],
        local_llm: LocalLLM | None = None,
        exclude_texts: Sequence[str] = (),
    ) -> Plan:
        """Choose the memories for one call. ``view`` is the caller's runtime (or governed
        view): memories are read through its public methods, so its permissions apply."""
        cfg = self.config
        now = cfg.clock()
        record = SchedulingRecord(new_id(), datetime.fromtimestamp(now, UTC).isoformat(),
                                  query, list(cube_ids), model)
        stable_items = self._stable_candidates(view, cube_ids, record, now)
        para = parametric_forms(self.mos, cube_ids, local_llm, query)
        hits = view.search(query, list(cube_ids), top_k=cfg.top_k + len(stable_items))
        self._reheat_promoted([h.item.id for h in hits if self._relevant(h)], now)

        # Stable set, within its token budget.
        sections: dict[str, list[MemoryItem]] = {name: [] for name in STABLE_SECTIONS}
        used = 0
        chosen_stable: list[MemoryItem] = []
        stable_reasons: dict[str, str] = {}
        for item in stable_items:
            if para is not None and (held := para.take(item)):
                record.decisions.append(_decision(item, "parametric", section_of(item), held, 0))
                continue
            tokens = count_tokens(render_memory(item) + "\n")
            pinned = item.memory_type in cfg.pinned_types
            why = (f"pinned {item.memory_type.value}: always relevant" if pinned
                   else "promoted: used in repeated answers while unchanged")
            if used + tokens > cfg.stable_token_budget:
                record.decisions.append(_decision(item, "skipped", section_of(item),
                                                  f"{why}; stable token budget full", tokens))
                continue
            used += tokens
            sections[section_of(item)].append(item)
            chosen_stable.append(item)
            stable_reasons[item.id] = why
        stable = stable_text(base_system, sections)

        # Form of the stable set.
        activation: LoadedActivation | None = None
        form_note: str
        if not chosen_stable:
            form_note = ""
        elif local_llm is None:
            form_note = "remote model: activation caches apply to the local model only"
        else:
            activation, form_note = self._activation_for(
                local_llm, cube_ids[0], base_system, sections, chosen_stable, record)
        form: Form = "activation" if activation is not None else "plaintext"
        for item in chosen_stable:
            reason = stable_reasons[item.id] + (f"; {form_note}" if form_note else "")
            tokens = count_tokens(render_memory(item) + "\n")
            record.decisions.append(_decision(item, form, section_of(item), reason, tokens))

        # Query-specific memories, by rank, within their budget.
        stable_ids = {i.id for i in stable_items}
        skip_texts = {t.strip() for t in exclude_texts}
        retrieved: list[MemoryItem] = []
        budget = cfg.retrieved_token_budget
        for rank, hit in enumerate(hits, 1):
            item = hit.item
            if item.id in stable_ids:
                continue
            if item.kind != MemoryKind.PLAINTEXT or ACTIVATION_TAG in item.tags:
                continue
            if para is not None and self._relevant(hit) and (held := para.take(item)):
                record.decisions.append(_decision(item, "parametric", "retrieved", held, 0,
                                                  hit.score))
                continue
            if item.memory_type == MemoryType.EPISODE and item.source.role == "assistant":
                # The model's own earlier answers are history, not facts: fed back, a small
                # model's slip ("I'm Zorblax") would be repeated as memory.
                record.decisions.append(_decision(item, "skipped", "retrieved",
                                                  "assistant turn: history, not memory", 0,
                                                  hit.score))
                continue
            if item.text.strip() in skip_texts:
                record.decisions.append(_decision(item, "skipped", "retrieved",
                                                  "already in the conversation", 0, hit.score))
                continue
            if len(retrieved) >= cfg.top_k:
                break
            if item.memory_type == MemoryType.SKILL:
                continue  # skills enter as procedures, chosen by _procedures below
            if not self._relevant(hit):
                cosine = hit.scores.get("vector", 0.0)
                record.decisions.append(_decision(
                    item, "skipped", "retrieved",
                    f"rank {rank}: not relevant (no keyword match, cosine {cosine:.2f})",
                    0, hit.score))
                continue
            tokens = count_tokens(render_memory(item) + "\n")
            if tokens > budget:
                record.decisions.append(_decision(item, "skipped", "retrieved",
                                                  f"rank {rank}: retrieved token budget full",
                                                  tokens, hit.score))
                continue
            budget -= tokens
            retrieved.append(item)
            record.decisions.append(_decision(
                item, "plaintext", "retrieved",
                f"retrieved for this query: rank {rank} of {len(hits)}", tokens, hit.score))
        retrieved += self._procedures(view, query, cube_ids, stable_ids, record, now,
                                      count_tokens)
        with self._lock:
            self._history.append(record)  # visible at once; after_answer adds its events
        adapters = para.selection() if para is not None else None
        return Plan(record, stable, retrieved, chosen_stable, activation, adapters)

    def _procedures(self, view: MemOS, query: str, cube_ids: Sequence[str],
                    stable_ids: set[str], record: SchedulingRecord, now: float,
                    count_tokens: Callable[[str], int]) -> list[MemoryItem]:
        """Skills that apply to the query, as the prompt's procedure block. They are usage-
        tracked like retrieved memories, so a skill used in repeated answers unchanged is
        promoted into the stable set (and so into the activation cache)."""
        from memosys.operation.skills_models import MAX_TASK_CHARS

        if self.config.skills_top_k < 1:
            return []
        # A long message is looked up by its start: a lookup key, nothing is stored.
        matches = view.find_skills(list(cube_ids), query[:MAX_TASK_CHARS],
                                   self.config.skills_top_k)
        self._reheat_promoted([m.item.id for m in matches], now)
        budget = self.config.skill_token_budget
        chosen: list[MemoryItem] = []
        for match in matches:
            item = match.item
            if item.id in stable_ids:
                continue  # promoted: already in the stable set
            why = f"skill for this task: similarity {match.score:.2f} to {match.matched!r}"
            tokens = count_tokens(render_memory(item) + "\n")
            if tokens > budget:
                record.decisions.append(_decision(item, "skipped", "procedure",
                                                  f"{why}; skill token budget full", tokens,
                                                  match.score))
                continue
            budget -= tokens
            chosen.append(item)
            record.decisions.append(_decision(item, "plaintext", "procedure", why, tokens,
                                              match.score))
        return chosen

    def _stable_candidates(
        self, view: MemOS, cube_ids: Sequence[str], record: SchedulingRecord, now: float
    ) -> list[MemoryItem]:
        cfg = self.config
        pinned: list[MemoryItem] = []
        types = [t.value for t in cfg.pinned_types]
        for cube in cube_ids:
            items = view.list(cube, {"memory_types": types}, limit=cfg.max_pinned)
            # Oldest first: a new rule is appended after the cached ones, so the cache of
            # the earlier rules stays a reusable prefix.
            pinned.extend(sorted((i for i in items if i.kind == MemoryKind.PLAINTEXT),
                                 key=lambda i: (i.created_at, i.id)))
        pinned_ids = {i.id for i in pinned}
        promoted: list[MemoryItem] = []
        with self._lock:
            candidates = [(i, u) for i, u in self._usage.items()
                          if u.promoted and u.cube_id in cube_ids and i not in pinned_ids]
        for item_id, usage in sorted(candidates, key=lambda c: c[0]):
            try:
                item = view.get(item_id)
            except NotFoundError:
                current = self.mos.vault.get_many([item_id]).get(item_id)
                if current is None:
                    self._demote(item_id, "purged", record)
                continue  # not visible to this caller: left out, still promoted for others
            if item.state != MemoryState.ACTIVE:
                self._demote(item_id, f"{item.state.value}", record)
            elif item.version != usage.version:
                self._demote(item_id, f"changed (v{usage.version} -> v{item.version})", record)
            elif usage.heat_at(now, cfg.heat_half_life_s) < cfg.cool_below:
                self._demote(item_id, "cooled: not relevant to recent queries", record)
            else:
                promoted.append(item)
        return pinned + promoted

    def _relevant(self, hit: SearchHit) -> bool:
        return "bm25" in hit.ranks or hit.scores.get("vector", 0.0) >= self.config.relevance_floor

    def _reheat_promoted(self, relevant: list[str], now: float) -> None:
        with self._lock:
            for item_id in relevant:
                usage = self._usage.get(item_id)
                if usage is not None and usage.promoted:
                    usage.heat = usage.heat_at(now, self.config.heat_half_life_s) + 1.0
                    usage.last_used = now

    def _demote(self, item_id: str, why: str, record: SchedulingRecord) -> None:
        with self._lock:
            usage = self._usage.pop(item_id, None)
        if usage is not None and usage.promoted:
            record.events.append(f"demoted {item_id}: {why}")

    def _activation_for(
        self,
        llm: LocalLLM,
        cube_id: str,
        base_system: str,
        sections: dict[str, list[MemoryItem]],
        items: list[MemoryItem],
        record: SchedulingRecord,
    ) -> tuple[LoadedActivation | None, str]:
        store = self.activation_store(llm)
        self._maybe_sweep(store, cube_id, record)
        levels = stable_levels(llm, base_system, sections)
        ids = [t for level in levels for t in level]
        sources = [SourceRef(i.id, i.version) for i in items]
        key = store.key_for(ids, sources)
        try:
            loaded = store.get(cube_id, key)
        except ActivationError as exc:
            record.events.append(f"refused cache {key}: {exc}")
            loaded = None
        if loaded is not None:
            record.activation = {"key": key, "record_id": loaded.record_id,
                                 "tokens": loaded.n_tokens, "source": loaded.source,
                                 "load_s": round(loaded.load_s, 4)}
            return loaded, f"served from the activation cache ({loaded.source})"
        job = self._queue_build(cube_id, base_system, sections, key)
        record.events.append(f"queued cache build {key} (job {job})")
        return None, f"cache not built yet (build queued: job {job}); text in the prompt"

    def _maybe_sweep(self, store: ActivationStore, cube_id: str,
                     record: SchedulingRecord) -> None:
        """Drop caches of changed, deleted or purged memories (at most every few seconds per
        cube), so a forgotten memory does not stay on disk as tensors."""
        now = time.monotonic()
        with self._lock:
            if now - self._swept.get(cube_id, -1e9) < SWEEP_EVERY_S:
                return
            self._swept[cube_id] = now
        for rid in store.sweep(cube_id):
            record.events.append(f"removed stale cache {rid}")

    def _queue_build(self, cube_id: str, base_system: str,
                     sections: dict[str, list[MemoryItem]], key: str) -> str:
        with self._lock:
            if key in self._pending:
                return self._pending[key]
            payload = {
                "key": key,
                "base_system": base_system,
                "sections": {name: [[i.id, i.version] for i in items]
                             for name, items in sections.items()},
            }
            job = self.mos.vault.enqueue_job(BUILD_JOB, payload, cube_id)
            self._pending[key] = job.id
        self.notify()
        return job.id

    # --- after the answer ----------------------------------------------------------------
    def after_answer(self, plan: Plan) -> None:
        """Record usage of the memories that were in the prompt; promote repeated ones."""
        cfg = self.config
        now = cfg.clock()
        ids = [i.id for i in plan.stable_items] + [i.id for i in plan.retrieved]
        if ids:
            self.mos.vault.record_access(ids, used_in_answer=True)
        if plan.activation is not None:
            self.mos.vault.record_access([plan.activation.record_id], used_in_answer=True)
        with self._lock:
            for item in plan.retrieved:
                usage = self._usage.get(item.id)
                if usage is None or usage.version != item.version:
                    usage = self._usage[item.id] = _Usage(item.cube_id, item.version)
                usage.heat = usage.heat_at(now, cfg.heat_half_life_s) + 1.0
                usage.uses += 1
                usage.last_used = now
                if not usage.promoted and usage.uses >= cfg.promote_after:
                    usage.promoted = True
                    plan.record.events.append(
                        f"promoted {item.id}: used in {usage.uses} answers unchanged at "
                        f"v{item.version}; joins the stable set (activation)")


def _decision(item: MemoryItem, form: Form, section: str, reason: str, tokens: int,
              score: float | None = None) -> MemoryDecision:
    return MemoryDecision(item.id, item.cube_id, item.version, item.memory_type.value, form,
                          section, reason, tokens, None if score is None else round(score, 4))
