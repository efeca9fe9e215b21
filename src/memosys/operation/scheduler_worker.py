"""The MemScheduler's background work: the durable job queue's worker (cache builds,
extractions, skill distillation, consolidations and the consolidation schedule), run on a
thread of the runtime or by `memosys worker` in a process of its own, and the activation
cache builds it runs.

Jobs are leased (`Vault.claim_job`), so several workers never run one job twice, and a job
whose worker died is claimed again when its lease runs out."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from memosys.errors import ActivationError, MemosysError
from memosys.infra.vault.base import Job
from memosys.interface.reader import JOB_KIND as EXTRACT_JOB
from memosys.memories.activation import SourceRef
from memosys.operation.consolidate import QUEUED_JOB as CONSOLIDATE_JOB
from memosys.operation.consolidate import queue_due, run_queued
from memosys.operation.prompt import STABLE_SECTIONS
from memosys.operation.skills_jobs import DISTIL_JOB as SKILLS_JOB
from memosys.operation.skills_jobs import run_distil_job
from memosys.types import MemoryItem, MemoryState

if TYPE_CHECKING:
    from memosys.memories.activation import ActivationStore
    from memosys.models.local_llm import LocalLLM
    from memosys.operation.scheduler import SchedulerConfig
    from memosys.system import MemOS

log = logging.getLogger(__name__)

BUILD_JOB = "activation_build"
ALL_JOBS = (BUILD_JOB, EXTRACT_JOB, SKILLS_JOB, CONSOLIDATE_JOB)
"""Every kind of queued job the worker runs; the other kinds are named by their owners."""


class BackgroundWork:
    """The worker half of `MemScheduler` (which holds the state named here)."""

    mos: MemOS
    config: SchedulerConfig
    _lock: threading.RLock
    _wake: threading.Event
    _stop: threading.Event
    _worker: threading.Thread | None
    _pending: dict[str, str]
    _consolidated: dict[str, tuple[float, int, str]]
    activation_store: Callable[[LocalLLM], ActivationStore]

    def notify(self) -> None:
        """Wake the worker (starting it on first use when ``background`` is on)."""
        if self.config.background:
            self.start()
        self._wake.set()

    def start(self) -> None:
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return
            self._stop.clear()
            self._worker = threading.Thread(target=self._work, name="memosys-scheduler",
                                            daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        self._worker = None

    def _work(self) -> None:
        self.run_worker(self._stop, wake=self._wake)

    def run_worker(self, stop: threading.Event, *, poll_interval: float = 1.0,
                   wake: threading.Event | None = None) -> int:
        """Run queued jobs of every kind, and queue the scheduled consolidations, until
        `stop` is set; returns the jobs run. The scheduler's own thread runs this, and so
        does `memosys worker` in a process of its own (jobs are leased: several workers
        never run one job twice)."""
        wake = wake or threading.Event()
        done = 0
        while not stop.is_set():
            try:
                ran = self.run_pending(max_jobs=1)
            except Exception:  # e.g. the vault closed under us: stop quietly
                if stop.is_set():
                    break
                log.exception("scheduler worker failed; retrying")
                ran = 0
            done += ran
            if not ran:
                if queue_due(self.mos, self._consolidated):
                    continue
                wake.wait(poll_interval)
                wake.clear()
        return done

    def run_pending(self, max_jobs: int | None = None,
                    kinds: Sequence[str] = ALL_JOBS) -> int:
        """Run queued jobs (cache builds, extractions, skill distillation, consolidations) now;
        returns how many ran."""
        done = 0
        while (max_jobs is None or done < max_jobs) and self.run_next(kinds) is not None:
            done += 1
        return done

    def run_next(self, kinds: Sequence[str] = ALL_JOBS) -> Job | None:
        """Claim the oldest queued job of these kinds and run it; the job as claimed (its
        outcome: `vault.get_job`), or None when nothing is queued."""
        job = self.mos.vault.claim_job(list(kinds), lease_seconds=600.0)
        if job is None:
            return None
        if job.kind == EXTRACT_JOB:
            self.mos.reader.run_job(job)
        elif job.kind == SKILLS_JOB:
            run_distil_job(self.mos, job)
        elif job.kind == CONSOLIDATE_JOB:
            run_queued(self.mos, job)
        else:
            self._run_build(job)
        return job

    def _run_build(self, job: Job) -> None:
        key = str(job.payload.get("key", ""))
        try:
            result = self.build_now(job.cube_id or "", job.payload)
            self.mos.vault.finish_job(job.id, result=result)
        except MemosysError as exc:  # stale sources or a model problem: nothing to retry
            self.mos.vault.finish_job(job.id, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("activation build %s failed", job.id)
            self.mos.vault.finish_job(job.id, error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def build_now(self, cube_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Build the cache a job describes (used by the worker; callable directly)."""
        from memosys.models.local_llm import LocalLLM

        llm = self.mos.llm
        if not isinstance(llm, LocalLLM):
            raise ActivationError("activation caches need the local model")
        store = self.activation_store(llm)
        store.sweep(cube_id)  # first drop caches whose sources changed (delete propagation)
        refs = {name: [(str(i), int(v)) for i, v in pairs]
                for name, pairs in payload.get("sections", {}).items()}
        wanted = [i for pairs in refs.values() for i, _ in pairs]
        current = self.mos.vault.get_many(wanted)
        sections: dict[str, list[MemoryItem]] = {}
        for name, pairs in refs.items():
            sections[name] = []
            for item_id, version in pairs:
                item = current.get(item_id)
                if item is None or item.version != version or item.state != MemoryState.ACTIVE:
                    raise ActivationError(f"source {item_id} changed before the build ran")
                sections[name].append(item)
        levels = stable_levels(llm, str(payload.get("base_system", "")), sections)
        sources = [SourceRef(i.id, i.version) for items in sections.values() for i in items]
        loaded = store.build(cube_id, levels, sources)
        return {"key": loaded.header.key, "record_id": loaded.record_id,
                "tokens": loaded.n_tokens, "build_s": loaded.header.build_s,
                "reused_tokens": loaded.header.reused_tokens, "bytes": loaded.header.bytes}


def stable_levels(llm: LocalLLM, base_system: str,
                  sections: dict[str, list[MemoryItem]]) -> list[list[int]]:
    """Token ids of the cacheable prefix, one list per level (system, persona, rules, ...).

    The prefix is the chat template's opening of the system message followed by the stable
    text; each level is tokenized on its own, which equals tokenizing the whole because every
    level ends with a newline and the next starts with a letter (the chat checks it)."""
    from memosys.operation.prompt import render_section

    tok = llm.tokenizer
    texts = [SYSTEM_OPEN + base_system.rstrip() + "\n"]
    texts.extend(render_section(name, sections.get(name, ())) for name in STABLE_SECTIONS)
    return [list(tok(t, add_special_tokens=False)["input_ids"]) if t else [] for t in texts]


SYSTEM_OPEN = "<|im_start|>system\n"
"""How SmolLM2's chat template opens the system message."""
