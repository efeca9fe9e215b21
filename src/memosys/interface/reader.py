"""MemReader: raw input (chat messages, documents) -> memory operations on a cube.

Pipeline (docs/reader.md):

1. **store** — messages are stored verbatim as episodes by ``MemOS.add`` and documents as
   chunks by :meth:`MemReader.add_document` *before* any extraction: nothing is lost if a
   model fails or the process dies.
2. **intents** — a user message that is a memory command ("remember that ...", "forget
   ...", "what do you know about me?") is carried out instead of extracted.
3. **extract** — an :class:`~memosys.interface.extract.Extractor` (rules, LLM, or both)
   proposes typed candidates with absolute event times and provenance.
4. **reconcile** — each candidate becomes ADD / UPDATE / DELETE (invalidate) / NOOP against
   the cube (:mod:`memosys.interface.reconcile`).
5. **mark** — each episode records that it was extracted (``metadata["reader"]``), so a
   re-run (a job re-claimed after a crash) skips it; a crash between 4 and 5 is covered by
   reconciliation recognising memories already derived from the episode.

``infer=True, wait=False`` enqueues a durable ``extract`` job instead; a worker
(:meth:`run_worker`, ``memosys worker``) processes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from memosys.errors import NotFoundError, RefusedByRuleError, ValidationError
from memosys.infra.vault.base import Job
from memosys.interface.chunking import DEFAULT_CHUNK_CHARS, chunk_document, decode_document
from memosys.interface.extract import (
    Candidate,
    CombinedExtractor,
    Extractor,
    RuleExtractor,
    Turn,
    run_extractor,
)
from memosys.interface.intents import IntentResult, parse_intent
from memosys.interface.reconcile import Decision, Reconciler
from memosys.models.llm import LLM
from memosys.types import MemoryItem, MemoryType, Visibility, utcnow

if TYPE_CHECKING:
    from memosys.system import MemOS

log = logging.getLogger(__name__)

JOB_KIND = "extract"
EXTRACTORS = ("rules", "llm", "auto")
MAX_ATTEMPTS = 3


class AddResult(list[MemoryItem]):
    """What ``MemOS.add(..., infer=True)`` returns: the stored episodes (it *is* that list,
    so existing callers keep working), plus ``.result`` (the extraction, when waited for)
    or ``.job`` (the queued job, with ``wait=False``)."""

    def __init__(self, items: Sequence[MemoryItem], *, result: ReadResult | None = None,
                 job: Job | None = None) -> None:
        super().__init__(items)
        self.result = result
        self.job = job


@dataclass
class ReadResult:
    """What one extraction run did."""

    episode_ids: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Episodes already extracted (by an earlier run of the same job, or earlier)."""
    candidates: list[Candidate] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    intents: list[IntentResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extractor: str = ""

    @property
    def items(self) -> list[str]:
        """Ids of memories written (added or updated)."""
        return [d.item_id for d in self.decisions if d.op != "NOOP" and d.item_id]

    def summary(self) -> dict[str, Any]:
        ops: dict[str, int] = {}
        for d in self.decisions:
            ops[d.op] = ops.get(d.op, 0) + 1
        return {
            "extractor": self.extractor, "episodes": len(self.episode_ids),
            "skipped": len(self.skipped), "candidates": len(self.candidates), "ops": ops,
            "intents": [{"intent": i.intent, "items": [x.id for x in i.items],
                         "message": i.message} for i in self.intents],
            "decisions": [d.as_dict() for d in self.decisions],
            "errors": self.errors,
        }


class MemReader:
    """Turns a cube's raw input into memories. Get one from ``MemOS.reader``."""

    def __init__(
        self,
        mos: MemOS,
        *,
        extractor: str | Extractor = "auto",
        llm: LLM | str | None = None,
        decider: str = "auto",
        llm_format: str = "auto",
    ) -> None:
        if isinstance(extractor, str) and extractor not in EXTRACTORS:
            raise ValidationError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")
        if decider not in ("auto", "rules", "llm"):
            raise ValidationError(f"decider must be auto, rules or llm, got {decider!r}")
        self.mos = mos
        self._extractor_spec = extractor
        self._llm_spec = llm
        self._llm: LLM | None = llm if llm is not None and not isinstance(llm, str) else None
        self.decider = decider
        self.llm_format = llm_format
        self._extractor: Extractor | None = None
        self._lock = threading.Lock()

    # --- components ----------------------------------------------------------------------
    @property
    def llm(self) -> LLM:
        """The chat model (the runtime's configured one unless given), loaded lazily."""
        if self._llm is None:
            from memosys.models.llm import make_llm

            s = self.mos.settings
            spec = self._llm_spec if isinstance(self._llm_spec, str) else s.llm
            self._llm = make_llm(spec, base_url=s.llm_base_url, api_key=s.llm_api_key,
                                 cache_dir=s.llm_cache_dir, home=s.home)
        return self._llm

    def _remote_configured(self) -> bool:
        spec = self._llm_spec if isinstance(self._llm_spec, str) else self.mos.settings.llm
        if self._llm is not None:
            from memosys.interface.llm_extract import is_small

            return not is_small(self._llm)
        return str(spec or "").lower().startswith("openai:")

    @property
    def extractor(self) -> Extractor:
        with self._lock:
            if self._extractor is None:
                self._extractor = self._make_extractor(self._extractor_spec)
            return self._extractor

    def _make_extractor(self, spec: str | Extractor) -> Extractor:
        if not isinstance(spec, str):
            return spec
        from memosys.interface.llm_extract import LLMExtractor

        if spec == "rules" or (spec == "auto" and not self._remote_configured()):
            return RuleExtractor()
        llm_extractor = LLMExtractor(self.llm, fmt=self.llm_format)
        if spec == "llm":
            return llm_extractor
        return CombinedExtractor(RuleExtractor(), llm_extractor)

    def reconciler(self) -> Reconciler:
        use_llm = self.decider == "llm" or (self.decider == "auto" and self._remote_configured())
        return Reconciler(self.mos, llm=self.llm if use_llm else None)

    # --- documents -----------------------------------------------------------------------
    def add_document(
        self,
        cube: str,
        document: str | bytes,
        *,
        uri: str,
        title: str | None = None,
        max_chunk_chars: int = DEFAULT_CHUNK_CHARS,
        encoding: str = "utf-8",
        user: str | None = None,
        session: str | None = None,
        tags: Sequence[str] = (),
        valid_from: datetime | None = None,
        visibility: str | Visibility = Visibility.CUBE,
        infer: bool = False,
        wait: bool = True,
    ) -> AddResult:
        """Store a text/markdown document as chunks (``document`` memories with
        ``source.document_uri``), then optionally extract memories from them."""
        if not isinstance(uri, str) or not uri.strip():
            raise ValidationError("a document needs a uri (where it came from)")
        text = decode_document(document, encoding)
        chunks = chunk_document(text, max_chunk_chars)
        found = self.mos.get_cube(cube)
        metadata_base: dict[str, Any] = {"title": title} if title else {}
        items = [
            MemoryItem(
                cube_id=found.id, memory_type=MemoryType.DOCUMENT, text=c.text,
                valid_from=valid_from, tags=list(tags), owner=user, visibility=visibility,
                source={"user": user, "session": session, "role": "document",
                        "document_uri": uri},
                metadata={**metadata_base, "chunk": c.index, "chunks": len(chunks),
                          "offset": c.start, "headings": list(c.headings)},
            )
            for c in chunks
        ]
        stored = self.mos.add_items(found.id, items)
        return self.after_add(found.id, stored, infer=infer, wait=wait)

    def after_add(
        self, cube: str, stored: Sequence[MemoryItem], *, infer: bool = True, wait: bool = True
    ) -> AddResult:
        """Called by ``MemOS.add(infer=True)`` once the episodes are durable."""
        if not infer:
            return AddResult(stored)
        if not stored:
            raise ValidationError("nothing to extract from: no messages were given")
        ids = [i.id for i in stored]
        if not wait:
            return AddResult(stored, job=self.enqueue(cube, ids))
        return AddResult(stored, result=self.process(cube, ids))

    # --- extraction ----------------------------------------------------------------------
    def process(
        self,
        cube: str,
        episodes: Sequence[str | MemoryItem],
        *,
        job_id: str | None = None,
        force: bool = False,
    ) -> ReadResult:
        """Extract and reconcile memories from stored episodes/chunks (idempotent)."""
        found = self.mos.get_cube(cube)
        ids = [e.id if isinstance(e, MemoryItem) else e for e in episodes]
        loaded = self.mos.vault.get_many(ids)
        missing = [i for i in ids if i not in loaded]
        if missing:
            raise NotFoundError(f"no episode {missing[0]!r}")
        ordered = sorted((loaded[i] for i in dict.fromkeys(ids)),
                         key=lambda it: (it.event_time, it.created_at))
        from memosys.system_extraction import guided, load, refused_decision, screen

        rules = load(self.mos, found.id)  # the cube's categories and rules (may be empty)
        extractor = guided(self.extractor, rules)
        result = ReadResult(extractor=getattr(extractor, "backend", extractor.name))
        reconciler = self.reconciler()
        context: list[Turn] = []
        for ep in ordered:
            if ep.cube_id != found.id:
                raise ValidationError(f"episode {ep.id} belongs to another cube")
            result.episode_ids.append(ep.id)
            turn = episode_turn(ep)
            if not force and ep.metadata.get("reader", {}).get("status") == "done":
                result.skipped.append(ep.id)
                context = [*context, turn][-3:]
                continue
            decisions: list[Decision] = []
            errors: list[str] = []
            intent = parse_intent(turn.text) if turn.role == "user" else None
            if intent is not None and intent.kind != "none":
                from memosys.interface.commands import run_intent

                try:
                    done = run_intent(self, found.id, intent, turn, user=ep.source.user,
                                      exclude={ep.id}, origin={ep.id: ep}, job_id=job_id)
                except RefusedByRuleError as exc:  # "remember that <refused>": audited
                    decisions.append(refused_decision(exc, None, [ep.id]))
                else:
                    result.intents.append(done)
                    decisions.extend(done.decisions)
            elif ep.memory_type in (MemoryType.EPISODE, MemoryType.DOCUMENT) and turn.text:
                extraction = run_extractor(extractor, turn, context)
                errors.extend(extraction.errors)
                kept, refused = screen(self.mos, found.id, turn, extraction.candidates, rules)
                decisions.extend(refused)
                result.candidates.extend(kept)
                for cand in kept:
                    try:
                        decisions.append(reconciler.apply(found.id, cand, {ep.id: ep},
                                                          job_id=job_id))
                    except RefusedByRuleError as exc:  # audited where it was refused
                        decisions.append(refused_decision(exc, cand.memory_type.value,
                                                          cand.derived_from))
            result.decisions.extend(decisions)
            result.errors.extend(errors)
            self._mark(ep, decisions, errors, job_id, result.extractor)
            context = [*context, turn][-3:]
        return result

    def _mark(self, ep: MemoryItem, decisions: list[Decision], errors: list[str],
              job_id: str | None, extractor: str) -> None:
        current = self.mos.get(ep.id)
        meta = dict(current.metadata)
        meta["reader"] = {
            "status": "done", "at": utcnow().isoformat(), "extractor": extractor,
            "derived": [d.item_id for d in decisions if d.item_id and d.op != "NOOP"],
            "decisions": [{"op": d.op, "item_id": d.item_id, "target_id": d.target_id,
                           "reason": d.reason} for d in decisions[:20]],
            **({"job": job_id} if job_id else {}), **({"errors": errors[:10]} if errors else {}),
        }
        self.mos.update(ep.id, metadata=meta)

    # --- intents -------------------------------------------------------------------------
    def intent(
        self, cube: str, text: str, *, user: str | None = None, speaker: str | None = None,
        at: datetime | None = None,
    ) -> IntentResult:
        """Carry out an explicit memory command ("remember that ...", "forget ...", "what do
        you know about me?"); ``intent == "none"`` when the text is not one."""
        from memosys.interface.commands import run_intent

        if not isinstance(text, str) or not text.strip():
            raise ValidationError("text must not be empty")
        found = self.mos.get_cube(cube)
        turn = Turn(text=text, speaker=speaker or user, role="user", timestamp=at or utcnow())
        return run_intent(self, found.id, parse_intent(text), turn, user=user)

    # --- jobs ----------------------------------------------------------------------------
    def enqueue(self, cube: str, episode_ids: Sequence[str]) -> Job:
        found = self.mos.get_cube(cube)
        if not episode_ids:
            raise ValidationError("nothing to extract")
        return self.mos.vault.enqueue_job(JOB_KIND, {"episode_ids": list(episode_ids)},
                                          found.id)

    def process_next_job(self, lease_seconds: float | None = None) -> Job | None:
        """Claim one queued (or abandoned) extract job and run it; None if there is none.

        The lease (default 5 min with the rules, 30 min with a model) is how long other
        workers wait before taking the job over from a worker that died."""
        if lease_seconds is None:
            lease_seconds = 300.0 if isinstance(self.extractor, RuleExtractor) else 1800.0
        job = self.mos.vault.claim_job([JOB_KIND], lease_seconds)
        if job is None:
            return None
        return self.run_job(job)

    def run_job(self, job: Job) -> Job:
        if job.attempts > MAX_ATTEMPTS:
            return self.mos.vault.finish_job(
                job.id, error=f"gave up after {job.attempts - 1} attempts")
        try:
            outcome = self.process(job.cube_id or "", job.payload.get("episode_ids", []),
                                   job_id=job.id)
        except Exception as exc:  # a crash (BaseException) leaves the job to be re-claimed
            log.exception("extract job %s failed", job.id)
            return self.mos.vault.finish_job(job.id, error=f"{type(exc).__name__}: {exc}")
        return self.mos.vault.finish_job(job.id, result=outcome.summary())

    def run_worker(
        self,
        stop_event: threading.Event | None = None,
        *,
        poll_interval: float = 1.0,
        max_jobs: int | None = None,
        lease_seconds: float | None = None,
    ) -> int:
        """Process jobs until `stop_event` is set (or `max_jobs` done); returns jobs run."""
        stop = stop_event or threading.Event()
        done = 0
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            job = self.process_next_job(lease_seconds)
            if job is None:
                stop.wait(poll_interval)
                continue
            done += 1
        return done


def episode_turn(item: MemoryItem) -> Turn:
    """The raw turn behind a stored episode or document chunk."""
    speaker = item.metadata.get("speaker")
    text = item.text
    if speaker and text.startswith(f"{speaker}: "):
        text = text[len(speaker) + 2:]
    if "withheld" in item.metadata:  # what an extraction rule withheld is not extracted
        from memosys.interface.reader_rules import strip_markers

        text = strip_markers(text)
    role = item.source.role or ("document" if item.memory_type == MemoryType.DOCUMENT
                                else "user")
    if not speaker and role == "user":
        speaker = item.source.user
    return Turn(text=text, speaker=speaker, role=role,
                timestamp=item.valid_from or item.created_at, episode_id=item.id,
                session=item.source.session, document_uri=item.source.document_uri)


def wait_for(mos: MemOS, job_id: str, timeout: float = 60.0) -> Job:
    """Poll a job until it is done or failed (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while True:
        job = mos.vault.get_job(job_id)
        if job.state in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)
