"""Tool and skill memory (docs/skills.md): tool calls and agent trajectories recorded as
memories, repeated successful trajectories distilled into *skill* memories, and skills
retrieved for a new task.

* ``record_tool_call`` stores one call as a ``tool_call`` memory (tags ``tool:<name>`` and,
  with a trajectory id, ``trajectory:<id>``; the call itself in ``metadata``).
* ``record_trajectory`` stores one run for a task as a ``trajectory`` memory: its steps
  given, or collected from the tool calls recorded with its trajectory id. A successful one
  queues a ``skills_distil`` job on the scheduler's worker.
* ``distil`` clusters the cube's successful trajectories (:mod:`.skills_distil`) and, for
  every cluster of at least ``min_support`` runs, writes a ``skill`` memory (name, when it
  applies, steps, pitfalls; ``derived_from`` the trajectories). A re-run is idempotent: an
  unchanged cluster writes nothing, a grown or shrunk one writes a new version of its skill,
  a skill that lost its support is archived (restorable by rollback).
* ``find`` scores a task against every skill's example tasks (cosine of embeddings) and
  keeps those over ``find_threshold``, so an unrelated task gets none.

Every write and read goes through the runtime's permission checks and audit, acting as the
runtime's (or view's) actor. Private trajectories only ever feed skills private to the same
owner.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from memosys.errors import NotFoundError, ValidationError
from memosys.infra.vault.base import ItemFilter
from memosys.operation.skills_distil import (
    Run,
    SkillDraft,
    closest_cluster,
    cluster,
    draft_skill,
    model_wording,
    skill_text,
)
from memosys.operation.skills_jobs import distil_lock, queue_distil
from memosys.operation.skills_models import (
    MAX_TASK_CHARS,
    SkillPayload,
    ToolCall,
    Trajectory,
    parse_model,
)
from memosys.types import (
    MemoryItem,
    MemoryKind,
    MemoryState,
    MemoryType,
    Source,
    Visibility,
    new_id,
    validated,
)

if TYPE_CHECKING:
    from memosys.system import MemOS

SKILL_TAG = "skill"
_TRAJECTORY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,51}$")
_PAGE = 1000
MAX_SKILLS_SCANNED = 5000


@dataclass(frozen=True)
class SkillConfig:
    min_support: int = 3
    """Similar successful trajectories needed before a skill is written."""
    cluster_threshold: float = 0.6
    """Average similarity (task cosine and tool-sequence overlap) to join a cluster."""
    task_weight: float = 0.5
    """Share of the task embedding in that similarity; the rest is the tool sequence."""
    find_threshold: float = 0.35
    """Cosine between a task and a skill's example tasks for the skill to apply. MiniLM:
    a new wording of a known kind of task scores 0.29-0.73 against the closest recorded
    one (most above 0.4), unrelated questions at most 0.22 (`memosys bench skills`)."""
    top_k: int = 3


@dataclass(frozen=True)
class SkillMatch:
    """A skill found for a task: its memory, the score and the example it matched."""

    item: MemoryItem
    score: float
    matched: str

    @property
    def payload(self) -> SkillPayload | None:
        return skill_payload(self.item)

    def as_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "matched": self.matched,
                "skill": skill_view(self.item)}


@dataclass
class DistilReport:
    """What one ``distil`` run found and did (or, with ``dry_run``, would do)."""

    id: str
    cube_id: str
    trajectories: int
    successful: int
    clusters: int
    min_support: int
    dry_run: bool = False
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    skills: list[dict[str, Any]] = field(default_factory=list)
    """One per skill touched: id (None in a dry run's new ones), name, action, support,
    failures, version, derived_from."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def skill_payload(item: MemoryItem) -> SkillPayload | None:
    """The structured skill of a skill memory; None for a hand-written one."""
    raw = item.metadata.get("skill")
    if not isinstance(raw, dict):
        return None
    try:
        return SkillPayload.model_validate(raw)
    except ValueError:
        return None


def skill_view(item: MemoryItem) -> dict[str, Any]:
    """A skill memory as interfaces return it."""
    payload = skill_payload(item)
    return {
        "id": item.id, "cube_id": item.cube_id, "version": item.version,
        "state": item.state.value, "text": item.text,
        "name": payload.name if payload else item.text.split("\n", 1)[0][:80],
        "when": payload.when if payload else None,
        "steps": [s.model_dump() for s in payload.steps] if payload else [],
        "pitfalls": [p.model_dump() for p in payload.pitfalls] if payload else [],
        "support": payload.support if payload else 0,
        "failures": payload.failures if payload else 0,
        "origin": payload.origin if payload else "manual",
        "derived_from": list(item.derived_from),
        "updated_at": item.updated_at.isoformat(),
    }


class SkillMemory:
    """Tool, trajectory and skill memory of one runtime or governed view."""

    def __init__(self, mos: MemOS, config: SkillConfig | None = None) -> None:
        self.mos = mos
        self.config = config or SkillConfig()

    # --- recording ------------------------------------------------------------------------
    def record_tool_call(
        self,
        cube: str,
        tool: str,
        arguments: dict[str, Any] | None = None,
        result: Any = None,
        success: bool = True,
        duration_ms: float | None = None,
        *,
        error: str | None = None,
        task: str | None = None,
        trajectory_id: str | None = None,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        visibility: str | Visibility = Visibility.CUBE,
    ) -> MemoryItem:
        call: ToolCall = parse_model(ToolCall, {
            "tool": tool, "arguments": {} if arguments is None else arguments,
            "result": result, "success": success, "duration_ms": duration_ms,
            "error": error}, "tool call")
        task = _task_arg(task)
        tid = _trajectory_id(trajectory_id)
        text = f"tool call {call.signature()}"
        if call.result:
            text += f" -> {call.result}"
        if not call.success:
            text += f" [failed{': ' + call.error if call.error else ''}]"
        if task:
            text += f" (task: {task})"
        tags = [f"tool:{call.tool}"[:64]] + ([f"trajectory:{tid}"] if tid else [])
        metadata = {**call.model_dump(), "role": "tool", "task": task, "trajectory_id": tid}
        [item] = self.mos.add(cube, text, memory_type=MemoryType.TOOL_CALL, tags=tags,
                              user=user, agent=agent, session=session, metadata=metadata,
                              visibility=visibility)
        return item

    def record_trajectory(
        self,
        cube: str,
        task: str,
        steps: Sequence[ToolCall | dict[str, Any]] | None = None,
        success: bool = True,
        *,
        outcome: str | None = None,
        trajectory_id: str | None = None,
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        visibility: str | Visibility = Visibility.CUBE,
        distil: bool = True,
    ) -> MemoryItem:
        found = self.mos.get_cube(cube, need="write")
        tid = _trajectory_id(trajectory_id)
        sources: list[str] = []
        if steps is None:
            if tid is None:
                raise ValidationError("give the steps, or the trajectory_id the tool calls "
                                      "were recorded with")
            calls = self._recorded_calls(found.id, tid)
            if not calls:
                raise ValidationError(f"no tool calls recorded with trajectory_id {tid!r}")
            steps = [_call_of(i) for i in calls]
            sources = [i.id for i in calls]
        elif isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
            raise ValidationError(f"steps must be a list, got {type(steps).__name__}")
        run: Trajectory = parse_model(Trajectory, {
            "task": task, "success": success, "outcome": outcome,
            "steps": [s.model_dump() if isinstance(s, ToolCall) else s for s in steps]},
            "trajectory")
        if not run.steps:
            raise ValidationError("a trajectory needs at least one step")
        tid = tid or new_id()
        outcome_line = "success" if run.success else "failure"
        lines = [f"Task: {run.task}",
                 f"Outcome: {outcome_line}" + (f": {run.outcome}" if run.outcome else ""),
                 "Steps: " + " ".join(
                     f"{n}. {s.signature()} -> {'ok' if s.success else 'failed'}"
                     for n, s in enumerate(run.steps, 1))]
        item = validated(
            MemoryItem, cube_id=found.id, memory_type=MemoryType.TRAJECTORY,
            text="\n".join(lines), owner=user, visibility=visibility,
            tags=["trajectory", f"outcome:{outcome_line}", f"trajectory:{tid}"],
            source=Source(user=user, agent=agent, session=session),
            derived_from=sources,
            metadata={"trajectory": {"id": tid, **run.model_dump()}})
        [stored] = self.mos.add_items(found.id, [item])
        if run.success and distil:
            queue_distil(self.mos, found.id)
        return stored

    def _recorded_calls(self, cube_id: str, tid: str) -> list[MemoryItem]:
        flt = self.mos._access.restrict(ItemFilter(
            cube_ids=(cube_id,), memory_types=(MemoryType.TOOL_CALL,),
            kinds=(MemoryKind.PLAINTEXT,), tags=(f"trajectory:{tid}",)))
        calls = self._all(flt)
        return sorted(calls, key=lambda i: (i.created_at, i.id))

    def _all(self, flt: ItemFilter, cap: int | None = None) -> list[MemoryItem]:
        out: list[MemoryItem] = []
        while batch := self.mos.vault.list_items(flt, _PAGE, len(out)):
            out.extend(batch)
            if cap is not None and len(out) >= cap:
                break
        return out

    # --- distillation ---------------------------------------------------------------------
    def distil(
        self,
        cube: str,
        *,
        min_support: int | None = None,
        use_model: bool = False,
        dry_run: bool = False,
    ) -> DistilReport:
        from memosys.arg_checks import int_arg

        support = int_arg("min_support", self.config.min_support if min_support is None
                           else min_support, 2, 1000)
        found = self.mos.get_cube(cube, need="write")
        # One run per cube at a time in this process (the job and an on-demand call), so
        # two runs never both create the skill of one new cluster. Across processes a
        # duplicate is possible and the next run archives it (the one matched keeps going).
        with distil_lock(self.mos.vault, found.id):
            return self._distil(found.id, support, use_model=use_model, dry_run=dry_run)

    def _distil(self, cube_id: str, support: int, *, use_model: bool,
                dry_run: bool) -> DistilReport:
        found = self.mos.vault.get_cube(cube_id)
        access = self.mos._access
        base = ItemFilter(cube_ids=(found.id,), kinds=(MemoryKind.PLAINTEXT,))
        runs: dict[tuple[str, str | None], list[Run]] = {}
        trajectories = self._all(access.restrict(
            _with_type(base, MemoryType.TRAJECTORY)))
        parsed = [(i, t) for i in trajectories if (t := _trajectory_of(i)) is not None]
        parsed.sort(key=lambda p: (p[0].created_at, p[0].id))
        vectors = _unit(self.mos.embedder.embed([t.task for _, t in parsed])) if parsed \
            else np.zeros((0, 1))
        for (item, traj), vec in zip(parsed, vectors, strict=True):
            runs.setdefault(_partition(item), []).append(Run(
                item.id, traj.task, traj.success, tuple(traj.steps), vec, traj.outcome))
        existing: dict[tuple[str, str | None], list[MemoryItem]] = {}
        # Archived (retired) skills can come back; deleted ones match so that a skill a
        # user deleted is not written again for the same trajectories.
        skills_flt = replace(_with_type(base, MemoryType.SKILL), states=(
            MemoryState.ACTIVE, MemoryState.ARCHIVED, MemoryState.DELETED))
        for item in self._all(access.restrict(skills_flt)):
            payload = skill_payload(item)
            if payload is not None and payload.origin == "distilled":
                existing.setdefault(_partition(item), []).append(item)

        report = DistilReport(new_id(), found.id, len(parsed),
                              sum(t.success for _, t in parsed), 0, support, dry_run)
        cfg = self.config
        for part in sorted(set(runs) | set(existing), key=lambda p: (p[0], p[1] or "")):
            ok = [r for r in runs.get(part, []) if r.success]
            failed = [r for r in runs.get(part, []) if not r.success]
            groups = cluster(ok, cfg.cluster_threshold, cfg.task_weight)
            report.clusters += len(groups)
            failures: dict[int, list[Run]] = {}
            for run in failed:
                index = closest_cluster(run, groups, cfg.cluster_threshold, cfg.task_weight)
                if index is not None:
                    failures.setdefault(index, []).append(run)
            drafts = [draft_skill(g, failures.get(n, []), cfg.task_weight)
                      for n, g in enumerate(groups) if len(g) >= support]
            self._apply(found.id, part, drafts, existing.get(part, []), report,
                        use_model=use_model)
        changed = [*report.created, *report.updated, *report.retired]
        self.mos._audit("skills.distil", cube_id=found.id,
                        items=[] if dry_run else self._versions(changed),
                        detail={"run": report.id, "dry_run": dry_run,
                                "trajectories": report.trajectories,
                                "clusters": report.clusters, "created": len(report.created),
                                "updated": len(report.updated),
                                "retired": len(report.retired)})
        return report

    def _versions(self, ids: list[str]) -> list[tuple[str, int]]:
        current = self.mos.vault.get_many(ids)
        return [(i, current[i].version) for i in ids if i in current]

    def _apply(self, cube_id: str, part: tuple[str, str | None], drafts: list[SkillDraft],
               existing: list[MemoryItem], report: DistilReport, *, use_model: bool) -> None:
        taken: set[str] = set()
        for draft in drafts:
            match = max(
                (s for s in existing if s.id not in taken
                 and set(s.derived_from) & set(draft.sources)),
                key=lambda s: (len(set(s.derived_from) & set(draft.sources)),
                               s.state == MemoryState.ACTIVE, s.id),
                default=None)
            old = skill_payload(match) if match is not None else None
            if use_model:
                name, when = model_wording(self.mos.llm, draft.payload)
                if name or when:
                    draft.payload.name = name or draft.payload.name
                    draft.payload.when = when or draft.payload.when
                    draft.payload.wording = self.mos.llm.id
            elif old is not None and old.wording != "alignment":
                # A model's wording is kept by later LLM-free runs: only the steps change.
                draft.payload.name, draft.payload.when = old.name, old.when
                draft.payload.wording = old.wording
            entry = {"name": draft.payload.name, "support": draft.payload.support,
                     "failures": draft.payload.failures, "derived_from": draft.sources}
            if match is None:
                item_id, version = self._create(cube_id, part, draft, report.dry_run)
                if item_id is not None:
                    report.created.append(item_id)
                report.skills.append({**entry, "id": item_id, "action": "created",
                                      "version": version})
                continue
            taken.add(match.id)
            if match.state == MemoryState.DELETED:
                report.skills.append({**entry, "id": match.id, "action": "kept deleted",
                                      "version": match.version})
                continue
            active = match.state == MemoryState.ACTIVE
            if (active and old is not None and old.model_dump() == draft.payload.model_dump()
                    and sorted(match.derived_from) == draft.sources):
                report.unchanged.append(match.id)
                report.skills.append({**entry, "id": match.id, "action": "unchanged",
                                      "version": match.version})
                continue
            version = match.version + 1
            if not report.dry_run:
                version = self._rewrite(match.id, "skill_update", {
                    "text": skill_text(draft.payload), "derived_from": draft.sources,
                    "metadata": {**match.metadata, "skill": draft.payload.model_dump()},
                    "state": MemoryState.ACTIVE})
            report.updated.append(match.id)
            report.skills.append({**entry, "id": match.id,
                                  "action": "updated" if active else "restored",
                                  "version": version})
        for skill in existing:
            if skill.id in taken or skill.state != MemoryState.ACTIVE:
                continue
            payload = skill_payload(skill)
            version = skill.version + 1
            if not report.dry_run:
                version = self._rewrite(skill.id, "skill_retire",
                                        {"state": MemoryState.ARCHIVED})
            report.retired.append(skill.id)
            report.skills.append({
                "id": skill.id, "name": payload.name if payload else "", "action": "retired",
                "support": 0, "failures": 0, "derived_from": list(skill.derived_from),
                "version": version})

    def _create(self, cube_id: str, part: tuple[str, str | None], draft: SkillDraft,
                dry_run: bool) -> tuple[str | None, int]:
        if dry_run:
            return None, 1
        private = part[0] == Visibility.PRIVATE.value
        item = validated(
            MemoryItem, cube_id=cube_id, memory_type=MemoryType.SKILL,
            text=skill_text(draft.payload), tags=[SKILL_TAG, "skill:distilled"],
            owner=part[1], visibility=Visibility.PRIVATE if private else Visibility.CUBE,
            derived_from=draft.sources, metadata={"skill": draft.payload.model_dump()})
        [stored] = self.mos.add_items(cube_id, [item])
        return stored.id, stored.version

    def _rewrite(self, item_id: str, op: str, changes: dict[str, Any]) -> int:
        # The runtime's own versioned write: permission checks, optimistic retry, audit.
        return self.mos._rewrite(item_id, op, lambda _cur: changes).version

    # --- retrieval ------------------------------------------------------------------------
    def find(
        self,
        cubes: str | Sequence[str],
        task: str,
        top_k: int | None = None,
        *,
        threshold: float | None = None,
    ) -> list[SkillMatch]:
        from memosys.arg_checks import int_arg, seq_arg, text_arg

        task = text_arg("task", task)
        if len(task) > MAX_TASK_CHARS:
            raise ValidationError(f"task is {len(task)} characters; the limit is "
                                  f"{MAX_TASK_CHARS}")
        top_k = int_arg("top_k", self.config.top_k if top_k is None else top_k, 1, 100)
        limit = self.config.find_threshold if threshold is None else threshold
        if isinstance(limit, bool) or not isinstance(limit, int | float) \
                or not -1.0 <= limit <= 1.0:
            raise ValidationError("threshold must be a number from -1 to 1")
        names = [cubes] if isinstance(cubes, str) else list(seq_arg("cubes", cubes))
        if not names:
            raise ValidationError("name at least one cube")
        ids = tuple(dict.fromkeys(self.mos.get_cube(c).id for c in names))
        flt = self.mos._access.restrict(ItemFilter(
            cube_ids=ids, memory_types=(MemoryType.SKILL,), kinds=(MemoryKind.PLAINTEXT,)))
        skills = self._all(flt, MAX_SKILLS_SCANNED)
        if not skills:
            return []
        examples = [_examples(s) for s in skills]
        texts = list(dict.fromkeys([task, *(t for ex in examples for t in ex)]))
        vectors = dict(zip(texts, _unit(self.mos.embedder.embed(texts)), strict=True))
        query = vectors[task]
        matches = []
        for skill, ex in zip(skills, examples, strict=True):
            score, best = max((float(np.dot(query, vectors[t])), t) for t in ex)
            if score >= limit:
                matches.append(SkillMatch(skill, score, best))
        matches.sort(key=lambda m: (-m.score, m.item.id))
        matches = self._fresh(matches)[:top_k]
        self.mos._audit("skills.find", items=[m.item for m in matches],
                        detail={"cubes": len(ids), "skills": len(skills),
                                "found": len(matches)})
        shown = self.mos._access.present([m.item for m in matches])
        return [SkillMatch(i, m.score, m.matched) for i, m in zip(shown, matches,
                                                                    strict=True)]

    def _fresh(self, matches: list[SkillMatch]) -> list[SkillMatch]:
        """Matches whose source trajectories are all still active. A distilled skill with a
        deleted or purged source is left out (a forgotten run never reaches a prompt through
        a skill) and a distil job is queued to update or retire it."""
        sources = {i for m in matches if _distilled(m.item) for i in m.item.derived_from}
        current = self.mos.vault.get_many(sorted(sources)) if sources else {}
        fresh, stale = [], set()
        for match in matches:
            if _distilled(match.item) and any(
                    i not in current or current[i].state != MemoryState.ACTIVE
                    for i in match.item.derived_from):
                stale.add(match.item.cube_id)
            else:
                fresh.append(match)
        for cube_id in sorted(stale):
            queue_distil(self.mos, cube_id)
        return fresh

    def list(self, cube: str, *, include_retired: bool = False, limit: int = 100,
             offset: int = 0) -> list[MemoryItem]:
        states = ["active", "archived"] if include_retired else ["active"]
        return self.mos.list(cube, {"memory_types": ["skill"], "states": states},
                             limit=limit, offset=offset)

    def get(self, skill_id: str) -> MemoryItem:
        item = self.mos.get(skill_id)
        if item.memory_type != MemoryType.SKILL:
            raise NotFoundError(f"no skill {skill_id!r} (that memory is a "
                                f"{item.memory_type.value})")
        return item


# --- helpers ----------------------------------------------------------------------------
def _with_type(flt: ItemFilter, memory_type: MemoryType) -> ItemFilter:
    return replace(flt, memory_types=(memory_type,))


def _partition(item: MemoryItem) -> tuple[str, str | None]:
    """Private memories feed only skills private to the same owner."""
    if item.visibility == Visibility.PRIVATE:
        return (Visibility.PRIVATE.value, item.owner)
    return ("shared", None)


def _trajectory_of(item: MemoryItem) -> Trajectory | None:
    raw = item.metadata.get("trajectory")
    if not isinstance(raw, dict):
        return None
    try:
        return Trajectory.model_validate({k: raw.get(k) for k in
                                          ("task", "steps", "success", "outcome")})
    except ValueError:
        return None  # not written by record_trajectory: left out of distillation


def _call_of(item: MemoryItem) -> dict[str, Any]:
    meta = item.metadata
    return {k: meta.get(k) for k in ("tool", "arguments", "result", "success",
                                     "duration_ms", "error")}


def _distilled(item: MemoryItem) -> bool:
    payload = skill_payload(item)
    return payload is not None and payload.origin == "distilled"


def _examples(item: MemoryItem) -> list[str]:
    payload = skill_payload(item)
    if payload is None:
        return [item.text]
    return [*payload.tasks, payload.when] if payload.tasks else [payload.when]


def _unit(vectors: np.ndarray) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms == 0, 1.0, norms)


def _task_arg(task: Any) -> str | None:
    if task is None:
        return None
    if not isinstance(task, str):
        raise ValidationError(f"task must be a string, got {type(task).__name__}")
    if len(task) > MAX_TASK_CHARS:
        raise ValidationError(f"task is {len(task)} characters; the limit is {MAX_TASK_CHARS}")
    return task.strip() or None


def _trajectory_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TRAJECTORY_ID.match(value):
        raise ValidationError(f"invalid trajectory_id {value!r}: 1-52 characters of letters, "
                              "digits, '_', '.', ':', '-'")
    return value
