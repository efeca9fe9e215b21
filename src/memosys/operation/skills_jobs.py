"""The background side of skill memory: the ``skills_distil`` job the scheduler's worker
runs after new successful trajectories (or a stale skill), and the per-cube lock that keeps
one distillation run per cube at a time in a process."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from memosys.errors import MemosysError, NotFoundError

if TYPE_CHECKING:
    from memosys.infra.vault.base import Job, Vault
    from memosys.system import MemOS

log = logging.getLogger(__name__)

DISTIL_JOB = "skills_distil"
"""The MemScheduler's worker (memosys.operation.scheduler_worker) dispatches it here."""

_LOCK = threading.Lock()
_QUEUED: weakref.WeakKeyDictionary[Vault, dict[str, str]] = weakref.WeakKeyDictionary()
"""Per vault: cube id -> the distil job queued for it, so a burst of trajectories queues
one job, not one each."""


_RUNNING: weakref.WeakKeyDictionary[Vault, dict[str, threading.Lock]] = \
    weakref.WeakKeyDictionary()


def distil_lock(vault: Vault, cube_id: str) -> threading.Lock:
    with _LOCK:
        return _RUNNING.setdefault(vault, {}).setdefault(cube_id, threading.Lock())


def queue_distil(mos: MemOS, cube_id: str) -> str:
    """Queue a ``skills_distil`` job for the cube (unless one is still waiting) and wake the
    scheduler's worker; returns the job id."""
    with _LOCK:
        queued = _QUEUED.setdefault(mos.vault, {})
        job_id = queued.get(cube_id)
        if job_id is not None:
            try:
                if mos.vault.get_job(job_id).state == "queued":
                    return job_id
            except NotFoundError:
                pass
        job = mos.vault.enqueue_job(DISTIL_JOB, {}, cube_id)
        queued[cube_id] = job.id
    mos.scheduler.notify()
    return job.id


def run_distil_job(mos: MemOS, job: Job) -> None:
    """Run a claimed ``skills_distil`` job (the scheduler's worker calls this)."""
    try:
        from memosys.operation.skills import SkillMemory

        report = SkillMemory(mos).distil(job.cube_id or "")
    except MemosysError as exc:  # e.g. the cube was deleted meanwhile: nothing to retry
        mos.vault.finish_job(job.id, error=f"{type(exc).__name__}: {exc}")
        return
    except Exception as exc:  # a bug must not leave the job leased and the worker stuck
        log.exception("skills_distil job %s failed", job.id)
        mos.vault.finish_job(job.id, error=f"{type(exc).__name__}: {exc}")
        return
    summary = {k: v for k, v in report.as_dict().items() if k != "skills"}
    mos.vault.finish_job(job.id, result=summary)


