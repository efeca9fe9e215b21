"""`memosys bench skills`: how well skill distillation and retrieval work on a fixed set of
agent task families (docs/skills.md).

Each family is one kind of task solved with one tool sequence (arguments varying per task),
worded five ways: three wordings are recorded as successful trajectories (plus one failed run
per family), two are held out as new tasks. Reported: skills distilled and their purity (all
sources from one family), for the held-out tasks the share whose best skill is their family's
(hit@1) and the share that got no skill (miss), for unrelated tasks the share that got any
skill (false positive), per find threshold; distil and find times.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from memosys.config import Settings
from memosys.models.embed import Embedder

FAMILIES: list[tuple[str, list[str], list[str]]] = [
    ("deploy", ["Deploy the web app to staging", "Deploy the billing service to staging",
                "Ship the search API to the staging environment",
                "Deploy the notifications service to staging",
                "Push the new build of the checkout service to staging"],
     ["git_pull", "run_tests", "deploy"]),
    ("backup", ["Back up the orders database", "Take a backup of the users database",
                "Make a snapshot backup of the analytics database",
                "Back up the inventory database before the migration",
                "Create a database backup for the payments DB"],
     ["db_connect", "db_dump", "upload_s3"]),
    ("triage", ["Triage the new bug reports in the issue tracker",
                "Go through today's new GitHub issues and label them",
                "Label and assign the incoming bug reports",
                "Triage incoming issues for the mobile app",
                "Sort the new issue reports by severity and assign owners"],
     ["list_issues", "classify", "label_issue", "assign_issue"]),
    ("invoice", ["Send the monthly invoice to ACME Corp", "Email the March invoice to Globex",
                 "Generate and send an invoice to Initech for February",
                 "Bill Umbrella Corp for last month's consulting hours",
                 "Prepare the invoice for Hooli and email it"],
     ["fetch_hours", "render_invoice", "send_email"]),
    ("meeting", ["Schedule a meeting with Dana next Tuesday",
                 "Set up a call with the design team on Friday",
                 "Book a 30 minute sync with Lee tomorrow afternoon",
                 "Find a slot and invite Priya to a meeting this week",
                 "Arrange a meeting with the marketing leads on Monday"],
     ["read_calendar", "find_slot", "create_event", "send_invite"]),
    ("report", ["Summarise last week's sales numbers into a report",
                "Write the weekly sales report",
                "Create a summary report of this month's sales figures",
                "Compile the quarterly sales report for the board",
                "Produce a short report on yesterday's sales"],
     ["query_sales", "aggregate", "write_doc"]),
    ("rotate", ["Rotate the API keys of the payment gateway",
                "Rotate the credentials for the production database",
                "Renew and rotate the expiring service account keys",
                "Rotate the secrets used by the CI pipeline",
                "Replace the leaked AWS access key with a new one"],
     ["create_secret", "update_config", "restart_service", "revoke_secret"]),
    ("translate", ["Translate the onboarding guide into German",
                   "Translate the product page into Spanish",
                   "Make a French version of the release notes",
                   "Translate the help center article into Japanese",
                   "Localise the pricing page into Italian"],
     ["fetch_doc", "translate", "publish_doc"]),
]

UNRELATED = [
    "What is the capital of Australia?", "Tell me a joke about cats",
    "How many legs does a spider have?", "Write a haiku about autumn leaves",
    "Who painted the Mona Lisa?", "What's the weather like on Mars?",
    "Recommend a good science fiction novel", "Explain how photosynthesis works",
    "What rhymes with orange?", "Give me a recipe for pancakes",
]

THRESHOLDS = (0.35, 0.45, 0.55)


@dataclass
class SkillsBenchResult:
    families: int
    skills: int
    pure: int
    distil_s: float
    find_p50_ms: float
    by_threshold: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"families": self.families, "skills": self.skills, "pure": self.pure,
                "distil_s": round(self.distil_s, 3), "find_p50_ms": round(self.find_p50_ms, 2),
                "by_threshold": self.by_threshold}


def _steps(tools: list[str], family: str, n: int, fail_at: int | None = None
           ) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        step: dict[str, Any] = {"tool": tool, "arguments": {"target": f"{family}-{n}",
                                                           "mode": "default"},
                                "result": "ok", "duration_ms": 100 + 10 * i}
        if i == fail_at:
            step.update(success=False, error=f"{tool} timed out")
            out.append(step)
            break
        out.append(step)
    return out


def run(embedder: Embedder | None = None) -> SkillsBenchResult:
    from memosys.system import MemOS

    with tempfile.TemporaryDirectory() as home, \
            MemOS(Settings.load(home), embedder=embedder) as mos:
        mos.create_cube("bench")
        sources: dict[str, str] = {}
        for family, tasks, tools in FAMILIES:
            for n, task in enumerate(tasks[:3]):
                item = mos.record_trajectory("bench", task, _steps(tools, family, n), True,
                                             distil=False)
                sources[item.id] = family
            failed = mos.record_trajectory("bench", tasks[0] + " again",
                                           _steps(tools, family, 9, fail_at=1), False,
                                           distil=False)
            sources[failed.id] = family
        started = time.perf_counter()
        report = mos.distil_skills("bench")
        distil_s = time.perf_counter() - started
        skills = mos.skills.list("bench", limit=1000)
        family_of = {}
        pure = 0
        for skill in skills:
            fams = {sources[i] for i in skill.derived_from}
            pure += len(fams) == 1
            family_of[skill.id] = fams.pop() if len(fams) == 1 else None
        assert len(report.created) == len(skills)

        timings: list[float] = []
        rows = []
        for threshold in THRESHOLDS:
            hits = misses = held = 0
            for family, tasks, _ in FAMILIES:
                for task in tasks[3:]:
                    held += 1
                    t0 = time.perf_counter()
                    found = mos.find_skills("bench", task, 1, threshold=threshold)
                    timings.append(time.perf_counter() - t0)
                    if not found:
                        misses += 1
                    elif family_of.get(found[0].item.id) == family:
                        hits += 1
            false_pos = sum(bool(mos.find_skills("bench", q, 1, threshold=threshold))
                            for q in UNRELATED)
            rows.append({"threshold": threshold, "held_out": held,
                         "hit@1": round(hits / held, 3), "miss": round(misses / held, 3),
                         "unrelated": len(UNRELATED),
                         "false_positive": round(false_pos / len(UNRELATED), 3)})
        return SkillsBenchResult(len(FAMILIES), len(skills), pure, distil_s,
                                 statistics.median(timings) * 1000, rows)
