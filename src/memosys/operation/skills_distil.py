"""Distilling skills from trajectories, without a model: clustering and sequence alignment.

1. **Similarity** of two runs = ``task_weight`` x cosine of their task embeddings +
   (1 - ``task_weight``) x the tool-sequence overlap ``2 * LCS / (len a + len b)`` (LCS: the
   longest common subsequence of the tools of their successful steps). Tasks worded
   differently but solved with the same tools stay together; a similar sentence solved
   with other tools does not.
2. **Clusters**: successful runs in the order they were recorded, each joining the cluster
   with the highest *average* similarity to its members when that is at least
   ``threshold``, else starting a new one. Deterministic, so a re-run finds the same
   clusters (idempotent distillation).
3. **Steps**: the cluster's medoid (the run most similar to the others) is aligned (LCS)
   with every member; a medoid step matched in at least half of the runs is a skill step.
   Its arguments: values all runs agreed on are the typical call, the others are listed as
   varying with examples.
4. **Pitfalls**: failed runs are assigned to the closest cluster (same threshold); their
   first failing step (tool + error), the skill steps they skipped, and steps that failed
   inside successful runs (retried) become pitfalls, counted.
5. **Name / when**: the words most of the tasks share (stopwords dropped), in the medoid
   task's order; a configured model may reword them (:func:`model_wording`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from memosys.operation.skills_models import Pitfall, SkillPayload, SkillStep, ToolCall

if TYPE_CHECKING:
    from memosys.models.llm import LLM

MAX_PITFALLS = 10
MAX_EXAMPLE_TASKS = 10
MAX_VARYING_EXAMPLES = 3

_WORD = re.compile(r"[a-z0-9][a-z0-9_\-]*")
_STOPWORDS = frozenset(
    "a an the to of for and or in on at by with from into onto via my our your their me us "
    "it its this that these those is are be been please new some any all up out as then "
    "so do does did can could should would will shall i we you".split()
)


@dataclass(frozen=True)
class Run:
    """One trajectory as distillation sees it."""

    item_id: str
    task: str
    success: bool
    steps: tuple[ToolCall, ...]
    vector: np.ndarray
    """Unit-length embedding of the task."""
    outcome: str | None = None

    @property
    def done(self) -> list[ToolCall]:
        """The steps that succeeded: what the run actually did."""
        return [s for s in self.steps if s.success]

    @property
    def tools(self) -> list[str]:
        """What the run did; for a failed run, what it attempted (its failing step too)."""
        return [s.tool for s in (self.done if self.success else self.steps)]


@dataclass
class SkillDraft:
    """What one cluster distils into; `sources`: the ids of every trajectory it came from
    (the successful ones and the failed ones its pitfalls came from)."""

    payload: SkillPayload
    sources: list[str]
    failed_sources: list[str]


def lcs_pairs(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs (i, j) of a longest common subsequence of `a` and `b`."""
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = (table[i + 1][j + 1] + 1 if a[i] == b[j]
                           else max(table[i + 1][j], table[i][j + 1]))
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] == b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def sequence_similarity(a: Sequence[str], b: Sequence[str]) -> float:
    if not a and not b:
        return 1.0
    return 2.0 * len(lcs_pairs(a, b)) / (len(a) + len(b))


def similarity(x: Run, y: Run, task_weight: float) -> float:
    cosine = float(np.dot(x.vector, y.vector))
    return task_weight * cosine + (1.0 - task_weight) * sequence_similarity(x.tools, y.tools)


def cluster(runs: Sequence[Run], threshold: float, task_weight: float) -> list[list[Run]]:
    clusters: list[list[Run]] = []
    for run in runs:
        best, best_score = None, threshold
        for members in clusters:
            score = sum(similarity(run, m, task_weight) for m in members) / len(members)
            if score >= best_score:
                best, best_score = members, score
        if best is None:
            clusters.append([run])
        else:
            best.append(run)
    return clusters


def closest_cluster(run: Run, clusters: Sequence[Sequence[Run]], threshold: float,
                    task_weight: float) -> int | None:
    best, best_score = None, threshold
    for index, members in enumerate(clusters):
        score = sum(similarity(run, m, task_weight) for m in members) / len(members)
        if score >= best_score:
            best, best_score = index, score
    return best


def medoid(runs: Sequence[Run], task_weight: float) -> Run:
    if len(runs) == 1:
        return runs[0]
    return max(runs, key=lambda r: (
        sum(similarity(r, o, task_weight) for o in runs if o is not r), -runs.index(r)))


def consensus_steps(runs: Sequence[Run], center: Run) -> list[SkillStep]:
    """The medoid's steps that at least half of the runs also took, in order."""
    base = center.done
    matched: list[list[ToolCall]] = [[] for _ in base]
    for run in runs:
        other = run.done
        for i, j in lcs_pairs([s.tool for s in base], [s.tool for s in other]):
            matched[i].append(other[j])
    need = math.ceil(len(runs) / 2)
    steps = []
    for calls in matched:
        if len(calls) < need:
            continue
        steps.append(_typical_call(calls))
    return steps


def _typical_call(calls: Sequence[ToolCall]) -> SkillStep:
    keys: list[str] = []
    for call in calls:
        keys.extend(k for k in call.arguments if k not in keys)
    fixed: dict[str, Any] = {}
    varying: dict[str, list[Any]] = {}
    for key in keys:
        values = [c.arguments[key] for c in calls if key in c.arguments]
        if len(values) * 2 < len(calls):
            continue  # an argument only a few runs passed is not part of the typical call
        distinct = _distinct(values)
        if len(distinct) == 1 and len(values) == len(calls):
            fixed[key] = distinct[0]
        else:
            varying[key] = distinct[:MAX_VARYING_EXAMPLES]
    return SkillStep(tool=calls[0].tool, arguments=fixed, varying=varying, support=len(calls))


def _distinct(values: Sequence[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(json.dumps(value, sort_keys=True, ensure_ascii=False), value)
    return list(seen.values())


def pitfalls(runs: Sequence[Run], failed: Sequence[Run],
             steps: Sequence[SkillStep]) -> list[Pitfall]:
    counts: Counter[tuple[str | None, str, str]] = Counter()
    wanted = [s.tool for s in steps]
    for run in failed:
        broken = next((s for s in run.steps if not s.success), None)
        if broken is not None:
            counts[(broken.tool, f"{broken.tool} failed: {_why(broken)}",
                    "failed_trajectory")] += 1
        else:
            note = _short(run.outcome) if run.outcome else "no error was recorded"
            counts[(None, f"a run of this kind did not succeed: {note}",
                    "failed_trajectory")] += 1
        for tool in dict.fromkeys(t for t in wanted if t not in run.tools):
            counts[(tool, f"runs that skipped {tool} failed", "failed_trajectory")] += 1
    for run in runs:
        for step in run.steps:
            if not step.success:
                counts[(step.tool, f"{step.tool} can fail ({_why(step)}); the run "
                        "recovered by retrying", "failed_step")] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1]))
    return [Pitfall(tool=tool, message=msg, count=n, source=src)
            for (tool, msg, src), n in ranked[:MAX_PITFALLS]]


def _why(step: ToolCall) -> str:
    return _short(step.error or step.result or "no error message")


def _short(text: str, limit: int = 200) -> str:
    """A one-line summary for a pitfall; the full text stays in the trajectory."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shared_words(tasks: Sequence[str], center: str) -> list[str]:
    """Words at least half of the tasks contain, in the order of `center`."""
    sets = [set(_words(t)) for t in tasks]
    need = math.ceil(len(tasks) / 2)
    order = list(dict.fromkeys(_words(center)))
    return [w for w in order if sum(w in s for s in sets) >= need]


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def draft_skill(runs: Sequence[Run], failed: Sequence[Run], task_weight: float) -> SkillDraft:
    center = medoid(runs, task_weight)
    steps = consensus_steps(runs, center)
    tasks = list(dict.fromkeys(r.task for r in [center, *runs]))[:MAX_EXAMPLE_TASKS]
    words = shared_words([r.task for r in runs], center.task)
    name = " ".join(words[:6]) or " then ".join(s.tool for s in steps[:4]) or center.task
    when = f'tasks like "{center.task}"' + (f" (they share: {', '.join(words[:8])})"
                                             if words else "")
    payload = SkillPayload(
        name=name, when=when, steps=steps, pitfalls=pitfalls(runs, failed, steps),
        tasks=tasks, support=len(runs), failures=len(failed))
    return SkillDraft(payload, sorted(r.item_id for r in [*runs, *failed]),
                      sorted(r.item_id for r in failed))


def skill_text(payload: SkillPayload) -> str:
    """The searchable text of a skill memory, also how it reads in a prompt."""
    when = payload.when  # a model's sentence, or the alignment's 'tasks like "..."'
    lines = [f"Skill: {payload.name}.", when if when.endswith(".") else f"Use it for {when}."]
    if payload.steps:
        lines.append("Steps: " + " ".join(f"{n}. {s.render()}"
                                          for n, s in enumerate(payload.steps, 1)))
    if payload.pitfalls:
        lines.append("Pitfalls: " + "; ".join(p.message for p in payload.pitfalls) + ".")
    lines.append(f"Learned from {payload.support} successful run"
                 f"{'s' if payload.support != 1 else ''}"
                 + (f" and {payload.failures} failed" if payload.failures else "") + ".")
    return "\n".join(lines)


def model_wording(llm: LLM, payload: SkillPayload) -> tuple[str | None, str | None]:
    """A short name and a `when` sentence worded by the configured model; either is None
    when the model's answer is not usable (the alignment's wording is kept for it).

    Two plain questions rather than one JSON answer: the 135M local model does not write
    JSON, but names a list of tasks and says what they have in common."""
    from memosys.errors import MemosysError

    context = "Tasks:\n" + "\n".join(f"- {t}" for t in payload.tasks[:5]) + "\n"
    try:
        named = llm.chat([{"role": "user", "content": context + "Name this kind of task in "
                           "at most four words."}], max_new_tokens=24, temperature=0.0).text
        when = llm.chat([{"role": "user", "content": context + "What do these tasks have in "
                          "common? Answer in one short sentence."}],
                        max_new_tokens=48, temperature=0.0).text
    except MemosysError:
        return None, None
    return name_from(named), sentence_from(when)


def name_from(text: str) -> str | None:
    """The first line of a model's answer as a name, when it is 1-6 words."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    name = line.strip().strip("\"'*#:.- ").removeprefix("Name:").strip().rstrip(".")
    return name if 1 <= len(name.split()) <= 6 and len(name) <= 80 else None


def sentence_from(text: str) -> str | None:
    """The first complete sentence of a model's answer (12-300 characters), else None."""
    text = " ".join(text.split()).lstrip("-* ")
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].strip()
    return sentence if 12 <= len(sentence) <= 300 and sentence[-1] in ".!" else None
