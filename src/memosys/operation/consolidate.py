"""Consolidation runs (docs/consolidation.md): merge near-duplicates, synthesise a profile
per user and a summary per topic, queue contradictions for review; every run has an id, a
plan, a record of what it did, and can be rolled back as one unit.

A run is a durable job (`Vault` jobs: its id is the run id, its result the run record):
``consolidation`` jobs record runs made in the caller's thread, ``consolidate`` jobs are runs
queued for the scheduler's worker (``wait=False``, or the schedule
``settings.consolidate_every_s``). All writes of a run go through the vault's single atomic
``commit`` with the versions the plan was made against, so a run lands whole or not at all
(a memory changed meanwhile: the run re-plans); its rollback is one commit too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from memosys.errors import ConflictError, MemosysError, NotFoundError, ValidationError
from memosys.infra.governance import Principal
from memosys.infra.vault.base import Job, Write
from memosys.operation.consolidate_plan import (
    SYNTH_KEY,
    Action,
    ConsolidationConfig,
    is_synthesised,
    plan_contradictions,
    plan_merges,
)
from memosys.operation.consolidate_synth import (
    SYNTH_TAGS,
    extractive_text,
    llm_text,
    plan_syntheses,
    profile_groups,
    synth_metadata,
    topic_groups,
)
from memosys.types import MemCube, MemoryItem, MemoryState, MemoryType, Source, utcnow, validated

if TYPE_CHECKING:
    from memosys.system import MemOS

log = logging.getLogger(__name__)

RUN_JOB = "consolidation"
"""The record of a run made in the caller's thread (never claimed by a worker)."""
QUEUED_JOB = "consolidate"
"""A run queued for the scheduler's worker."""
_REPLANS = 3
MERGED_KEY = "merged_from"
"""A survivor's ``metadata[MERGED_KEY]``: the memories merged into it (id, version, run)."""


@dataclass(frozen=True)
class Change:
    """What a run did to one memory: `before` None means the run created it."""

    item_id: str
    op: str
    """survivor | superseded | synthesised | regenerated | retired"""
    before: int | None
    after: int


@dataclass
class ConsolidationRun:
    id: str
    cube_id: str
    dry_run: bool
    state: str
    """queued | planned (dry run) | done | rolled_back | failed"""
    plan: list[Action] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    reviews: list[str] = field(default_factory=list)
    """Review-queue entries the run opened (contradictions)."""
    config: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None
    started_at: str | None = None
    seconds: float = 0.0
    rolled_back_at: str | None = None
    rollback_changes: list[Change] = field(default_factory=list)
    error: str | None = None
    clock_after: int | None = None
    """The cube's clock once the run's writes landed (the schedule's "changed since")."""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for action in self.plan:
            out[action.kind] = out.get(action.kind, 0) + 1
        out["superseded"] = sum(1 for c in self.changes if c.op == "superseded")
        return out

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = self.counts()
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ConsolidationRun:
        values = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        values["plan"] = [Action.from_dict(a) for a in values.get("plan", [])]
        values["changes"] = [Change(**c) for c in values.get("changes", [])]
        values["rollback_changes"] = [Change(**c) for c in values.get("rollback_changes", [])]
        return cls(**values)


class Consolidator:
    """Bound to a runtime or an actor view: checks (write on the cube) and audits are the
    view's, and only memories the actor may see are read or changed."""

    def __init__(self, mos: MemOS) -> None:
        self.mos = mos

    # --- running ------------------------------------------------------------------------
    def run(self, cube: str, *, dry_run: bool = False,
            config: ConsolidationConfig | dict[str, Any] | None = None,
            wait: bool = True) -> ConsolidationRun:
        if not isinstance(dry_run, bool) or not isinstance(wait, bool):
            raise ValidationError("dry_run and wait must be booleans")
        cfg = config if isinstance(config, ConsolidationConfig) else \
            ConsolidationConfig.from_dict(config)
        found = self.mos.get_cube(cube, need="write")
        payload = {"config": cfg.as_dict(), "dry_run": dry_run,
                   "actor": _principal_dict(self.mos.actor)}
        if not wait:
            job = self.mos.vault.enqueue_job(QUEUED_JOB, payload, found.id)
            self.mos._audit("consolidate.queue", cube_id=found.id,
                            detail={"run": job.id, "dry_run": dry_run})
            self.mos.scheduler.notify()
            return ConsolidationRun(job.id, found.id, dry_run, "queued",
                                    config=cfg.as_dict(), actor=self.mos.actor.user_id)
        job = self.mos.vault.enqueue_job(RUN_JOB, payload, found.id)
        return self.execute(found, job.id, cfg, dry_run)

    def execute(self, found: MemCube, run_id: str, cfg: ConsolidationConfig,
                dry_run: bool) -> ConsolidationRun:
        """Plan and (unless `dry_run`) apply; the record is stored as the job's result."""
        run = ConsolidationRun(run_id, found.id, dry_run, "planned", config=cfg.as_dict(),
                               actor=self.mos.actor.user_id, started_at=utcnow().isoformat())
        start = time.perf_counter()
        try:
            for attempt in range(_REPLANS):
                items = self._live(found.id)
                run.plan = self.plan(found, items, cfg, run_id)
                if dry_run:
                    break
                try:
                    run.changes, run.reviews = self._apply(found, run.plan, items, cfg,
                                                           run_id)
                    run.state = "done"
                    break
                except ConflictError:
                    if attempt == _REPLANS - 1:
                        raise
                    log.info("consolidation %s: a memory changed meanwhile; re-planning",
                             run_id)
        except Exception as exc:
            run.state, run.error = "failed", f"{type(exc).__name__}: {exc}"
            run.seconds = round(time.perf_counter() - start, 3)
            self.mos.vault.finish_job(run_id, result=run.as_dict(), error=run.error)
            self.mos._audit("consolidate", cube_id=found.id, outcome="error",
                            detail={"run": run_id, "dry_run": dry_run})
            raise
        run.seconds = round(time.perf_counter() - start, 3)
        run.clock_after = self.mos.vault.get_cube(found.id).clock
        self.mos.vault.finish_job(run_id, result=run.as_dict())
        self.mos._audit("consolidate", cube_id=found.id,
                        items=[(c.item_id, c.after) for c in run.changes],
                        detail={"run": run_id, "dry_run": dry_run, **run.counts()})
        if not dry_run:  # one event for the run; its writes have their own events already
            self.mos.events.publish("consolidated", found.id,
                                    [c.item_id for c in run.changes],
                                    {"run": run_id, **run.counts()})
        return run

    def _live(self, cube_id: str) -> list[MemoryItem]:
        mos = self.mos
        flt = mos._access.restrict(mos._filter([cube_id], {"states": ["active"]}))
        out: list[MemoryItem] = []
        while batch := mos.vault.list_items(flt, 1000, len(out)):
            out.extend(batch)
        return out

    # --- planning -----------------------------------------------------------------------
    def plan(self, found: MemCube, items: list[MemoryItem], cfg: ConsolidationConfig,
             run_id: str) -> list[Action]:
        by_id = {i.id: i for i in items}
        vectors = self.mos.vault.vectors([i.id for i in items
                                          if i.memory_type != MemoryType.EPISODE])
        actions: list[Action] = []
        if cfg.contradictions:
            actions += plan_contradictions(items, vectors, cfg, self._queued_pairs(found.id))
        merges = plan_merges(items, vectors, cfg) if cfg.merge else []
        actions += merges
        if cfg.synthesise:
            gone = {d for a in merges for d in a.item_ids[1:]}
            after = {a.item_ids[0]: by_id[a.item_ids[0]].version + 1 for a in merges}
            live = {i.id: i for i in items if i.id not in gone}
            pool = list(live.values())
            groups = profile_groups(pool, by_id, cfg) + \
                topic_groups(self.mos, found.id, pool, cfg)
            existing = [i for i in items if is_synthesised(i)]
            actions += plan_syntheses(groups, live, existing, after, cfg, self._writer(cfg))
        return actions

    def _writer(self, cfg: ConsolidationConfig) -> Any:
        if cfg.synthesis != "llm":
            return lambda group, members: extractive_text(group, members, cfg)
        llm = self.mos.llm

        def write(group: Any, members: list[MemoryItem]) -> str:
            return llm_text(llm, group, members, cfg) or extractive_text(group, members, cfg)

        return write

    def _queued_pairs(self, cube_id: str) -> set[frozenset[str]]:
        out = set()
        for r in self.mos.vault.governance.list_reviews([cube_id], state=None,
                                                        limit=1_000_000):
            if r.kind == "contradiction":
                out.add(frozenset((r.item_id, *r.related_ids)))
        return out

    # --- applying -----------------------------------------------------------------------
    def _apply(self, found: MemCube, actions: list[Action], items: list[MemoryItem],
               cfg: ConsolidationConfig, run_id: str) -> tuple[list[Change], list[str]]:
        mos = self.mos
        by_id = {i.id: i for i in items}
        texts = [a.text for a in actions if a.kind in ("profile", "topic") and a.text]
        embedded: dict[str, np.ndarray] = dict(zip(
            texts, mos.embedder.embed(texts) if texts else [], strict=True))
        writes: list[Write] = []
        ops: dict[str, str] = {}
        for action in actions:
            if action.kind == "merge":
                survivor, dups = by_id[action.item_ids[0]], [by_id[i]
                                                             for i in action.item_ids[1:]]
                writes.append(mos._next_version(survivor, _survivor_changes(
                    survivor, dups, run_id), "consolidate"))
                ops[survivor.id] = "survivor"
                for dup in dups:
                    writes.append(mos._next_version(dup, {
                        "state": MemoryState.SUPERSEDED,
                        "metadata": {**dup.metadata, "superseded_by": survivor.id,
                                     "consolidation_run": run_id}}, "consolidate"))
                    ops[dup.id] = "superseded"
            elif action.kind in ("profile", "topic"):
                method = cfg.synthesis
                text = action.text or ""
                if action.target_id is not None:
                    old = by_id[action.target_id]
                    writes.append(mos._next_version(old, {
                        "text": text, "derived_from": list(action.versions),
                        "metadata": synth_metadata(action, run_id, method, old.metadata)},
                        "consolidate", embedded))
                    ops[old.id] = "regenerated"
                else:
                    item = self._new_synth(found, action, run_id, method)
                    writes.append(Write(item, "consolidate", None, embedded[text]))
                    ops[item.id] = "synthesised"
            elif action.kind == "retire" and action.target_id in by_id:
                old = by_id[action.target_id]
                writes.append(mos._next_version(old, {"state": MemoryState.ARCHIVED},
                                                "consolidate"))
                ops[old.id] = "retired"
        for w in writes:
            mos._access.require_item(w.item, "write", "consolidate")
        stored = mos.vault.commit(found.id, writes) if writes else []
        changes = [Change(s.id, ops[s.id], w.expected_version, s.version)
                   for s, w in zip(stored, writes, strict=True)]
        reviews = [self._queue_contradiction(by_id, a, run_id) for a in actions
                   if a.kind == "contradiction"]
        return changes, [r for r in reviews if r]

    def _new_synth(self, found: MemCube, action: Action, run_id: str,
                   method: str) -> MemoryItem:
        mos = self.mos
        item = validated(
            MemoryItem, cube_id=found.id, memory_type=MemoryType.FACT, text=action.text,
            tags=[SYNTH_TAGS[action.kind]], derived_from=list(action.versions),
            owner=mos._access.owner_for_new(None),
            source=Source(user=action.subject if action.kind == "profile" else None,
                          agent="consolidation"),
            metadata=synth_metadata(action, run_id, method))
        return mos._access.label(found.id, [item])[0]

    def _queue_contradiction(self, by_id: dict[str, MemoryItem], action: Action,
                             run_id: str) -> str | None:
        newer, *older = action.item_ids
        entry = self.mos.lifecycle._queue(by_id[newer], "contradiction",
                                          f"consolidation {run_id}: {action.reason}",
                                          tuple(older))
        return entry.id if run_id in entry.reason else None  # an older open entry stood

    # --- records and rollback -----------------------------------------------------------
    def get_run(self, run_id: str, *, need: str = "read") -> ConsolidationRun:
        mos = self.mos
        try:
            job = mos.vault.get_job(_text(run_id))
        except NotFoundError:
            raise NotFoundError(f"no consolidation run {run_id!r}") from None
        if job.kind not in (RUN_JOB, QUEUED_JOB) or job.cube_id is None:
            raise NotFoundError(f"no consolidation run {run_id!r}")
        try:
            mos.get_cube(job.cube_id, need=need)
        except NotFoundError:
            raise NotFoundError(f"no consolidation run {run_id!r}") from None
        if job.result:
            return ConsolidationRun.from_dict(job.result)
        cfg = job.payload.get("config") or {}
        state = {"queued": "queued", "running": "running"}.get(job.state, job.state)
        return ConsolidationRun(job.id, job.cube_id, bool(job.payload.get("dry_run")), state,
                                config=cfg, error=job.error)

    def rollback(self, run_id: str) -> ConsolidationRun:
        """Undo a whole run in one commit: superseded memories active again, survivors and
        regenerated memories at their earlier versions, new syntheses deleted, the run's
        open review entries withdrawn. ConflictError when a memory the run wrote changed
        since (roll that change back first), so a later edit is never silently lost."""
        mos = self.mos
        run = self.get_run(run_id, need="write")
        if run.dry_run:
            raise ValidationError(f"run {run.id} was a dry run: it changed nothing")
        if run.state == "rolled_back":
            raise ConflictError(f"run {run.id} is already rolled back")
        if run.state != "done":
            raise ConflictError(f"run {run.id} is {run.state}; only a finished run rolls back")
        current = mos.vault.get_many([c.item_id for c in run.changes])
        moved = [c.item_id for c in run.changes
                 if c.item_id not in current or current[c.item_id].version != c.after]
        if moved:
            raise ConflictError(
                f"run {run.id} cannot be rolled back as one unit: {len(moved)} memories "
                f"changed since it ran ({', '.join(moved[:5])})")
        from memosys.system_versions import restorable

        writes: list[Write] = []
        embedded: dict[str, np.ndarray] = {}
        for change in run.changes:
            cur = current[change.item_id]
            mos._access.require_item(cur, "write", "consolidate.rollback")
            if change.before is None:
                target: dict[str, Any] = {"state": MemoryState.DELETED}
            else:
                then = {r.item.version: r.item for r in mos.vault.history(cur.id)}
                target = restorable(then[change.before])
            writes.append(mos._next_version(cur, target, "consolidate_rollback", embedded))
        stored = mos.vault.commit(run.cube_id, writes) if writes else []
        for review_id in run.reviews:  # one already decided by someone: that stands
            with contextlib.suppress(ConflictError, NotFoundError):
                mos.vault.governance.resolve_review(review_id, "withdrawn",
                                                    mos.actor.user_id)
        run.state = "rolled_back"
        run.rolled_back_at = utcnow().isoformat()
        run.rollback_changes = [Change(s.id, "rollback", w.expected_version, s.version)
                                for s, w in zip(stored, writes, strict=True)]
        mos.vault.finish_job(run.id, result=run.as_dict())
        mos._audit("consolidate.rollback", cube_id=run.cube_id, items=stored,
                   detail={"run": run.id, "memories": len(stored)})
        mos.events.publish("consolidated", run.cube_id, [s.id for s in stored],
                           {"run": run.id, "rolled_back": True})
        return run

    def stale(self, cube: str) -> list[tuple[MemoryItem, str]]:
        """Synthesised memories whose sources changed since they were written, with why
        (the next run regenerates them)."""
        found = self.mos.get_cube(cube)
        items = self._live(found.id)
        synths = [i for i in items if is_synthesised(i)]
        sources = {s for i in synths for s in i.metadata[SYNTH_KEY].get("sources", {})}
        current = self.mos.vault.get_many(list(sources))
        out = []
        for item in synths:
            why = []
            for sid, version in item.metadata[SYNTH_KEY].get("sources", {}).items():
                now = current.get(sid)
                if now is None or now.state != MemoryState.ACTIVE:
                    why.append(f"source {sid} is no longer active")
                elif now.version != int(version):
                    why.append(f"source {sid} changed (v{version} -> v{now.version})")
            if why:
                out.append((item, "; ".join(why)))
        return out


def _survivor_changes(survivor: MemoryItem, dups: list[MemoryItem],
                      run_id: str) -> dict[str, Any]:
    """The survivor keeps provenance to all: their sources, message ids and tags join its
    own, and it lists the merged memories (whose text it contains)."""
    merged = list(survivor.metadata.get(MERGED_KEY) or [])
    merged += [{"id": d.id, "version": d.version, "run": run_id} for d in dups]
    return {
        "derived_from": _unique([*survivor.derived_from, *(p for d in dups
                                                          for p in d.derived_from)]),
        "tags": _unique([*survivor.tags, *(t for d in dups for t in d.tags)]),
        "source": survivor.source.model_copy(update={"message_ids": _unique(
            [*survivor.source.message_ids, *(m for d in dups for m in d.source.message_ids)])}),
        "metadata": {**survivor.metadata, MERGED_KEY: merged},
    }


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("run id must be a non-empty string")
    return value


def _principal_dict(p: Principal) -> dict[str, Any]:
    return {"user_id": p.user_id, "role": p.role, "scopes": sorted(p.scopes),
            "agent": p.agent}


# --- the scheduler's side -----------------------------------------------------------------
def run_queued(mos: MemOS, job: Job) -> None:
    """Run a queued ``consolidate`` job on the worker, as the principal who queued it."""
    from memosys.infra.governance import LOCAL_ADMIN

    raw = job.payload.get("actor") or {}
    principal = Principal(str(raw.get("user_id", LOCAL_ADMIN.user_id)),
                          str(raw.get("role", "member")), frozenset(raw.get("scopes") or ()),
                          raw.get("agent"))
    view = mos if principal == LOCAL_ADMIN else mos.as_actor(principal)
    try:
        cfg = ConsolidationConfig.from_dict(job.payload.get("config"))
        found = view.get_cube(job.cube_id or "", need="write")
        Consolidator(view).execute(found, job.id, cfg, bool(job.payload.get("dry_run")))
    except MemosysError as exc:
        mos.vault.finish_job(job.id, error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        log.exception("consolidation job %s failed", job.id)
        mos.vault.finish_job(job.id, error=f"{type(exc).__name__}: {exc}")


def queue_due(mos: MemOS, last: dict[str, tuple[float, int, str]],
              now: float | None = None) -> list[str]:
    """The schedule (``settings.consolidate_every_s``; 0 = off): queue a run for every cube
    whose last scheduled run is that old, has finished, and which changed since (its clock
    moved past the clock that run left). `last`: the scheduler's cube id -> (time queued,
    cube clock then, job id) of its last scheduled run."""
    every = float(getattr(mos.settings, "consolidate_every_s", 0) or 0)
    if every <= 0:
        return []
    now = time.time() if now is None else now
    queued = []
    for cube in mos.vault.list_cubes():
        if cube.id in last:
            at, clock, job_id = last[cube.id]
            if now - at < every:
                continue
            try:
                job = mos.vault.get_job(job_id)
            except NotFoundError:
                job = None
            if job is not None and job.state in ("queued", "running"):
                continue
            if job is not None and job.result and job.result.get("clock_after") is not None:
                clock = int(job.result["clock_after"])
            if cube.clock == clock:
                continue
        job = mos.vault.enqueue_job(QUEUED_JOB, {"config": {}, "dry_run": False,
                                                 "actor": _principal_dict(mos.actor),
                                                 "scheduled": True}, cube.id)
        last[cube.id] = (now, cube.clock, job.id)
        queued.append(job.id)
    return queued
