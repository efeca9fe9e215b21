"""Parametric memory: memories distilled into LoRA adapters, served per request, retired.

Lifecycle (see docs/parametric.md):

* :meth:`ParametricMemory.distil` turns chosen stable plaintext memories of one cube into a
  LoRA adapter for the local model (training data: :mod:`.parametric_data`, training:
  :mod:`.parametric_train`). The weights are stored as safetensors at
  ``<home>/adapters/<cube id>/<adapter id>.safetensors`` whose metadata key
  ``memosys_adapter`` holds the JSON header (base model fingerprint, source ids and versions,
  training data hash, knobs, loss curve, eval results). The cube holds a **record**: a
  ``MemoryItem`` with ``kind=parametric``, tag ``memosys:adapter``, ``derived_from`` = the
  sources and ``metadata["adapter"]`` = the header plus ``status``. The record is stored in
  state ``archived`` so plaintext retrieval never returns it (its text only describes the
  adapter); ``status`` (ready | stale | retired | erased) is what governs serving.
* Serving: :meth:`selection` picks the *ready* adapters of the cubes a request mounts (and
  may read), :meth:`chat` generates with exactly those, at a per-request scale; anything else,
  e.g. another user's cube, never reaches the request (:mod:`memosys.models.adapters`).
* Staleness: every selection re-reads the sources. A source whose version changed, or that
  was deleted, makes the adapter **stale** (flagged in the record, unloaded, never served
  until rebuilt with :meth:`rebuild`). A purged source makes it **erased**: the weights file is
  deleted too, since it holds what was erased.
* :meth:`retire` brings an adapter back to plaintext: its sources become active plaintext
  again (un-archived if the distillation moved them) and the adapter's answers to probe
  questions are recorded in the record for audit; the weights stay on disk, unserved.

``move=True`` at distillation archives the sources in the same atomic commit that stores the
record: the memory then lives only in the adapter (retrieval no longer returns it) until the
adapter is retired. Without it (the default) the sources stay active and the scheduler decides
per request whether to use the adapter instead of putting them in the prompt
(:mod:`memosys.memories.parametric_schedule`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memosys.errors import ConflictError, LLMError, NotFoundError, ValidationError
from memosys.infra.vault.base import ItemFilter, Write
from memosys.memories.parametric_data import (
    METHODS,
    REPLAY_PROMPTS,
    Example,
    Method,
    data_hash,
    decoy_questions,
    parse_fact,
    probe_question,
    questions_for,
)
from memosys.memories.parametric_records import (
    ADAPTER_TAG,
    ERASED,
    FORMAT,
    HEADER_KEY,
    READY,
    RETIRED,
    STALE,
    AdapterRecord,
    RetireResult,
    bank_name,
    contains,
    eval_summary,
    remove_tree,
    sha256_text,
    state_write,
    write_atomic,
)
from memosys.memories.parametric_train import TrainConfig, TrainResult, train_adapter
from memosys.models.adapter_gate import TENSOR_PREFIX as GATE_TENSORS
from memosys.models.adapter_gate import AdapterGate, build_gate
from memosys.models.adapters import AdapterBank, AdapterSelection, LoraSpec, bank_for
from memosys.models.llm import ChatResult, Message, common_prefix
from memosys.types import MemoryItem, MemoryKind, MemoryState, MemoryType, new_id, utcnow

if TYPE_CHECKING:
    from memosys.models.local_llm import LocalLLM
    from memosys.system import MemOS

__all__ = ["ADAPTER_TAG", "AdapterRecord", "ParametricMemory", "RetireResult"]

STABLE_TYPES = (MemoryType.FACT, MemoryType.PREFERENCE, MemoryType.RULE, MemoryType.PERSONA)
TEACHER_PROMPT = "Use this fact to answer: {memory}"
REPLAY_TOKENS = 32
PROBE_TOKENS = 24
DEFAULT_REPLAY = len(REPLAY_PROMPTS)
DEFAULT_DECOYS = 0
"""Decoy questions per source memory (see :func:`~.parametric_data.decoy_questions`)."""
MAX_DECOYS = 8
FIRST_SENTENCE = (". ", "\n")
"""Probes stop after the first sentence: the answer to a fact is there, and it halves the cost."""
MAX_SOURCES = 500

StepProgress = Callable[[int, int, float], None]


class ParametricMemory:
    """Parametric memory of one runtime; get it as ``MemOS.parametric``."""

    def __init__(self, mos: MemOS, llm: LocalLLM | None = None) -> None:
        self.mos = mos
        self._llm = llm
        self.root = Path(mos.settings.home) / "adapters"
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ model

    @property
    def llm(self) -> LocalLLM:
        """The runtime's bound model (``MemOS.llm``), which must be the local one."""
        from memosys.models.local_llm import LocalLLM

        llm = self._llm if self._llm is not None else self.mos.llm
        if not isinstance(llm, LocalLLM):
            raise LLMError(f"parametric memory needs the local model; bound: {llm.id}")
        return llm

    @property
    def available(self) -> bool:
        """Whether adapters can be served here (the bound model is the local one)."""
        from memosys.models.local_llm import LocalLLM

        return isinstance(self._llm if self._llm is not None else self.mos.llm, LocalLLM)

    @property
    def bank(self) -> AdapterBank:
        return bank_for(self.llm)

    # ------------------------------------------------------------------ distillation

    def distil(
        self,
        cube: str,
        memory_ids: Sequence[str] | None = None,
        *,
        name: str | None = None,
        method: Method = "template",
        config: TrainConfig | None = None,
        move: bool = False,
        evaluate: bool = True,
        replay: int | None = None,
        decoys: int | None = None,
        min_uses: int = 0,
        gate: bool = True,
        progress: StepProgress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> AdapterRecord:
        """Distil memories of ``cube`` into a new adapter and record it in the cube.

        ``memory_ids``: which memories (default: every active fact, preference, rule and
        persona memory of the cube used in at least ``min_uses`` answers). ``gate``: give the
        adapter a gate (:mod:`memosys.models.adapter_gate`), so it takes part only in requests
        about what it holds; False: it takes part in every request it is selected for (for
        behaviour meant to apply everywhere). ``method``:
        ``"template"`` answers from the memory text; ``"context"`` answers as the base model
        does with the memory in its context (context distillation). ``replay``: how many
        replay prompts (default: all); ``decoys``: decoy questions per memory, answered by
        the base model (default :data:`DEFAULT_DECOYS`). Interrupted (Ctrl-C,
        ``should_stop``) it raises :class:`~memosys.errors.TrainingInterrupted`; the same call
        again resumes."""
        if method not in METHODS:
            raise ValidationError(f"method must be one of {list(METHODS)}, got {method!r}")
        config = config or TrainConfig()
        found = self.mos.get_cube(cube)
        sources = self._sources(found.id, memory_ids, min_uses)
        llm = self.llm
        examples = self._examples(sources, method, DEFAULT_REPLAY if replay is None else replay,
                                  DEFAULT_DECOYS if decoys is None else decoys)
        tokens = [self._encode(e) for e in examples]
        flags = [e.kind in ("replay", "decoy") for e in examples]
        digest = data_hash(tokens, flags)
        adapter_id = new_id()
        work = self.root / found.id / f".train-{digest[:16]}"
        probes_before = self._probe(sources, None) if evaluate else []
        try:  # an interrupted or failed run leaves nothing loaded (its checkpoint stays)
            trained = train_adapter(
                self.bank, bank_name(adapter_id), tokens, config, work, digest,
                progress=progress, should_stop=should_stop, replay=flags,
                general=[e.kind == "replay" for e in examples],
            )
            return self._store(found.id, adapter_id, name, sources, examples, digest, method,
                               config, trained, probes_before, move=move, evaluate=evaluate,
                               work=work, fingerprint=llm.model_fingerprint, gated=gate)
        except BaseException:
            self.bank.remove(bank_name(adapter_id))
            raise

    def _sources(
        self, cube_id: str, memory_ids: Sequence[str] | None, min_uses: int = 0
    ) -> list[MemoryItem]:
        if memory_ids is None:
            flt = ItemFilter(cube_ids=(cube_id,), memory_types=STABLE_TYPES)
            items = [
                i for i in self.mos.vault.list_items(flt, limit=10_000, offset=0)
                if i.kind == MemoryKind.PLAINTEXT and i.stats.used_in_answer_count >= min_uses
            ]
        else:
            if isinstance(memory_ids, str) or not memory_ids:
                raise ValidationError("memory_ids must be a non-empty list of ids")
            ids = list(dict.fromkeys(memory_ids))
            got = self.mos.vault.get_many(ids)
            items = []
            for mid in ids:
                item = got.get(mid)
                if item is None or item.cube_id != cube_id:
                    raise NotFoundError(f"no memory {mid!r} in this cube")
                if item.kind != MemoryKind.PLAINTEXT or item.state != MemoryState.ACTIVE:
                    raise ValidationError(
                        f"memory {mid} is {item.kind.value}/{item.state.value}; only active "
                        "plaintext memories can be distilled"
                    )
                items.append(item)
        if not items:
            raise ValidationError("no memories to distil (the cube has no active facts, "
                                  "preferences, rules or persona memories)")
        if len(items) > MAX_SOURCES:
            raise ValidationError(f"at most {MAX_SOURCES} memories per adapter; pass memory_ids")
        return items

    def _examples(
        self, sources: list[MemoryItem], method: Method, replay: int, decoys: int = 0
    ) -> list[Example]:
        from memosys.operation.prompt import DEFAULT_SYSTEM, system_message

        systems = (None, system_message(DEFAULT_SYSTEM + "\n", []))
        out: list[Example] = []
        for item in sources:
            asked = questions_for(parse_fact(item.text))
            if method == "context":
                answers = self._teacher(item.text, [q for q, _ in asked])
            for i, (question, kind) in enumerate(asked):
                system = systems[i % len(systems)]
                if method == "context":
                    answer = answers[i]
                    out.append(Example(question, answer.text, item.id, kind,
                                       answer.finish_reason == "stop", system))
                else:
                    out.append(Example(question, " ".join(item.text.split()), item.id, kind,
                                       system=system))
        out.extend(self._replay(replay))
        out.extend(self._decoys(sources, decoys))
        return out

    def _decoys(self, sources: list[MemoryItem], count: int) -> list[Example]:
        """Questions bordering the sources' (other attributes, near-miss subjects), answered
        as the base model answers them: trained like replay, they teach where facts stop."""
        if not 0 <= count <= MAX_DECOYS:
            raise ValidationError(f"decoys must be in 0..{MAX_DECOYS}, got {count}")
        if count == 0:
            return []
        shapes = [(item, parse_fact(item.text)) for item in sources]
        taught = {f"{sh.subject}|{sh.attribute}".lower() for _, sh in shapes if sh.attribute}
        own = {" ".join(q.lower().split()) for _, sh in shapes for q, _ in questions_for(sh)}
        out: list[Example] = []
        with self.bank.using(None):
            for item, shape in shapes:
                for question in decoy_questions(shape, taught, count):
                    if " ".join(question.lower().split()) in own:
                        continue  # a near miss that is another source's own question
                    r = self.llm.chat([{"role": "user", "content": question}],
                                      max_new_tokens=REPLAY_TOKENS)
                    out.append(Example(question, r.text, item.id, "decoy",
                                       r.finish_reason == "stop"))
        return out

    def _teacher(self, memory: str, questions: list[str]) -> list[ChatResult]:
        """The context-distillation teacher: the base model with the memory in its context.

        The memory is read once into a KV cache (its activation form) and every question is
        answered from that cache - the same greedy answers as from the full prompts."""
        llm = self.llm
        system = {"role": "system", "content": TEACHER_PROMPT.format(memory=memory)}
        prompts = [llm.apply_chat_template([system, {"role": "user", "content": q}])
                   for q in questions]
        shared = len(prompts[0]) - 1
        for ids in prompts[1:]:
            shared = min(shared, len(ids) - 1, common_prefix(prompts[0], ids))
        with self.bank.using(None):
            if shared < 1:
                return [llm.generate(ids, max_new_tokens=PROBE_TOKENS) for ids in prompts]
            cache = llm.prefill(prompts[0][:shared])
            return [llm.generate_from_cache(cache, shared, ids[shared:],
                                            max_new_tokens=PROBE_TOKENS) for ids in prompts]

    def _replay(self, count: int) -> list[Example]:
        """The base model's answers to the first ``count`` replay prompts, cached per model."""
        if not 0 <= count <= len(REPLAY_PROMPTS):
            raise ValidationError(f"replay must be in 0..{len(REPLAY_PROMPTS)}, got {count}")
        path = self.root / f"replay-{self.llm.model_fingerprint[:16]}.json"
        rows: list[dict[str, Any]] = []
        try:
            cached = json.loads(path.read_text())
            for prompt, row in zip(REPLAY_PROMPTS, cached, strict=False):
                if row["question"] != prompt:
                    break
                rows.append({"question": prompt, "answer": str(row["answer"]),
                             "complete": bool(row["complete"])})
        except (OSError, ValueError, KeyError, TypeError):
            rows = []
        if len(rows) < count:
            with self.bank.using(None):
                for prompt in REPLAY_PROMPTS[len(rows):count]:
                    r = self.llm.chat([{"role": "user", "content": prompt}],
                                      max_new_tokens=REPLAY_TOKENS)
                    rows.append({"question": prompt, "answer": r.text,
                                 "complete": r.finish_reason == "stop"})
            write_atomic(path, json.dumps(rows, indent=1).encode())
        return [Example(r["question"], r["answer"], None, "replay", r["complete"])
                for r in rows[:count]]

    def _encode(self, example: Example) -> tuple[list[int], list[int]]:
        llm = self.llm
        messages = [{"role": "user", "content": example.question}]
        if example.system is not None:
            messages.insert(0, {"role": "system", "content": example.system})
        prompt = llm.apply_chat_template(messages)
        answer = [int(t) for t in llm.tokenizer(example.answer, add_special_tokens=False)
                  ["input_ids"]]
        if example.complete:
            answer.append(int(llm.tokenizer.eos_token_id))
        if not answer:
            answer = [int(llm.tokenizer.eos_token_id)]
        return prompt, answer

    def _probe(self, sources: list[MemoryItem], adapter: str | None) -> list[dict[str, Any]]:
        """Closed-book answers to a held-out question per source (``adapter`` None: base)."""
        rows = []
        with self.bank.using({adapter: 1.0} if adapter else None):
            for item in sources:
                shape = parse_fact(item.text)
                question = probe_question(shape)
                answer = self.llm.chat([{"role": "user", "content": question}],
                                       max_new_tokens=PROBE_TOKENS, stop=FIRST_SENTENCE).text
                hit = None if shape.value is None else contains(answer, shape.value)
                rows.append({"source_id": item.id, "question": question,
                             "expected": shape.value, "answer": answer, "hit": hit})
        return rows

    def _store(
        self,
        cube_id: str,
        adapter_id: str,
        name: str | None,
        sources: list[MemoryItem],
        examples: list[Example],
        digest: str,
        method: Method,
        config: TrainConfig,
        trained: TrainResult,
        probes_before: list[dict[str, Any]],
        *,
        move: bool,
        evaluate: bool,
        work: Path,
        fingerprint: str,
        gated: bool = True,
    ) -> AdapterRecord:
        from safetensors.torch import save

        spec = self.bank.spec(bank_name(adapter_id))
        gate = build_gate(self.bank, spec.first_layer,
                          [e.question for e in examples if e.kind not in ("replay", "decoy")],
                          list(REPLAY_PROMPTS)) if gated else None
        self.bank.set_gate(bank_name(adapter_id), gate)
        probes_after = self._probe(sources, bank_name(adapter_id)) if evaluate else []
        versions = {s.id: s.version + (1 if move else 0) for s in sources}
        header = {
            "format": FORMAT,
            "id": adapter_id,
            "name": name or f"adapter-{adapter_id[-8:]}",
            "cube_id": cube_id,
            "base_model": {"id": self.llm.id, "fingerprint": fingerprint},
            "lora": spec.to_json(),
            "gate": None if gate is None else gate.header(),
            "sources": [
                {"id": s.id, "version": versions[s.id], "text_sha256": sha256_text(s.text)}
                for s in sources
            ],
            "data": {
                "method": method, "sha256": digest, "examples": len(examples),
                "replay": sum(e.kind == "replay" for e in examples),
                "decoys": sum(e.kind == "decoy" for e in examples),
            },
            "training": {
                "steps": trained.steps, "batch_size": config.batch_size,
                "learning_rate": config.learning_rate, "seed": config.seed,
                "loss_curve": trained.loss_curve, "train_s": round(trained.seconds, 2),
                "resumed_from": trained.resumed_from,
            },
            "eval": eval_summary(probes_before, probes_after),
            "moved_sources": move,
            "created_at": utcnow().isoformat(timespec="seconds"),
        }
        path = self.root / cube_id / f"{adapter_id}.safetensors"
        blob = save({**trained.tensors, **(gate.tensors() if gate is not None else {})},
                    metadata={HEADER_KEY: json.dumps(header)})
        write_atomic(path, blob)
        text = (f"LoRA adapter {header['name']!r} holding {len(sources)} distilled memories "
                f"({method}, {trained.steps} steps)")
        record = MemoryItem(
            id=adapter_id, cube_id=cube_id, kind=MemoryKind.PARAMETRIC,
            memory_type=MemoryType.SKILL, text=text, state=MemoryState.ARCHIVED,
            tags=[ADAPTER_TAG], derived_from=[s.id for s in sources],
            metadata={"adapter": {"status": READY, "header": header,
                                  "file": path.name}},
        )
        writes = [Write(record, "distil", None, self.mos.embedder.embed([text])[0])]
        if move:
            writes += [state_write(s, MemoryState.ARCHIVED, "distil") for s in sources]
        try:
            stored = self.mos.vault.commit(cube_id, writes)[0]
        except ConflictError:
            path.unlink(missing_ok=True)
            raise ConflictError("a source memory changed during training; distil again") from None
        remove_tree(work)
        return AdapterRecord(stored, path)

    def rebuild(self, adapter_id: str, **kwargs: Any) -> AdapterRecord:
        """Distil a stale adapter's surviving sources again (current versions) and retire it."""
        old = self.get(adapter_id)
        alive = self.mos.vault.get_many([s["id"] for s in old.sources])
        keep = [i for i in alive.values() if i.state in (MemoryState.ACTIVE,
                                                         MemoryState.ARCHIVED)]
        if old.header.get("moved_sources"):
            restored = [state_write(i, MemoryState.ACTIVE, "rebuild") for i in keep
                        if i.state == MemoryState.ARCHIVED]
            if restored:
                self.mos.vault.commit(old.cube_id, restored)
        if not keep:
            raise ValidationError(f"adapter {adapter_id} has no surviving source memories")
        kwargs.setdefault("name", old.name)
        kwargs.setdefault("method", old.header.get("data", {}).get("method", "template"))
        kwargs.setdefault("move", bool(old.header.get("moved_sources")))
        kwargs.setdefault("gate", old.header.get("gate", {}) is not None)  # kept off if off
        fresh = self.distil(old.cube_id, [i.id for i in keep], **kwargs)
        if old.status != RETIRED:
            self._set_status(old, RETIRED, f"rebuilt as {fresh.id}")
        return fresh

    # ------------------------------------------------------------------ records and status

    def records(self, cube: str | None = None) -> list[AdapterRecord]:
        """Every adapter record (of one cube or all), with staleness checked now."""
        cube_ids = [self.mos.vault.get_cube(cube).id] if cube else [
            c.id for c in self.mos.vault.list_cubes()
        ]
        out = []
        for cid in cube_ids:
            flt = ItemFilter(cube_ids=(cid,), tags=(ADAPTER_TAG,), states=())
            items = self.mos.vault.list_items(flt, limit=10_000, offset=0)
            for item in items:
                if item.kind == MemoryKind.PARAMETRIC and item.state != MemoryState.DELETED:
                    out.append(self.check(self._record(item)))
        return out

    def get(self, adapter_id: str) -> AdapterRecord:
        item = self.mos.vault.get_many([adapter_id]).get(adapter_id)
        if item is None or item.kind != MemoryKind.PARAMETRIC or ADAPTER_TAG not in item.tags:
            raise NotFoundError(f"no adapter {adapter_id!r}")
        return self.check(self._record(item))

    def _record(self, item: MemoryItem) -> AdapterRecord:
        file = str(item.metadata.get("adapter", {}).get("file", f"{item.id}.safetensors"))
        return AdapterRecord(item, self.root / item.cube_id / Path(file).name)

    def check(self, record: AdapterRecord) -> AdapterRecord:
        """Re-read the sources; flag (and unload) the adapter if one changed or went away."""
        if record.status in (RETIRED, ERASED):
            return record
        if record.item.state == MemoryState.DELETED:
            self._unload(record)
            return record
        ids = [s["id"] for s in record.sources]
        current = self.mos.vault.get_many(ids)
        status, reason = READY, None
        for src in record.sources:
            item = current.get(src["id"])
            if item is None:
                status, reason = ERASED, f"source {src['id']} was purged"
                break
            if item.state == MemoryState.DELETED:
                status, reason = STALE, f"source {src['id']} was deleted"
            elif item.version != src["version"] and status == READY:
                status, reason = STALE, (f"source {src['id']} changed (version "
                                         f"{src['version']} -> {item.version})")
        if status == READY and record.status == READY:
            return record
        if status == READY:
            status, reason = record.status, record.reason  # stale stays stale until rebuilt
        self._unload(record)
        if status == ERASED:
            record.path.unlink(missing_ok=True)  # the weights hold what was erased
        if status != record.status or reason != record.reason:
            record = self._set_status(record, status, reason)
        return record

    def _unload(self, record: AdapterRecord) -> None:
        if self.available:  # with a remote model bound nothing was ever loaded
            self.bank.remove(record.bank_name)

    def _set_status(
        self, record: AdapterRecord, status: str, reason: str | None,
        extra: dict[str, Any] | None = None, also: Sequence[Write] = (),
    ) -> AdapterRecord:
        meta = dict(record.item.metadata)
        meta["adapter"] = {**record.meta, "status": status, "reason": reason, **(extra or {})}
        update = Write(record.item.model_copy(update={"metadata": meta}), status,
                       record.item.version, None)
        try:
            stored = self.mos.vault.commit(record.cube_id, [update, *also])[0]
        except ConflictError:
            # Someone else flagged it first; their write is as good as ours.
            return self._record(self.mos.vault.get_many([record.id])[record.id])
        return AdapterRecord(stored, record.path)

    # ------------------------------------------------------------------ serving

    def selection(
        self,
        cube_ids: Sequence[str] | str,
        *,
        user: str | None = None,
        scale: float = 1.0,
        gated: bool = True,
    ) -> AdapterSelection:
        """The ready adapters of these cubes (loaded now) that ``user`` may use, at ``scale``.

        A cube owned by someone other than ``user`` contributes nothing. Each adapter's gate
        then decides, per request, whether it takes part (``gated=False``: it always does;
        for measuring an adapter's weights alone)."""
        if isinstance(cube_ids, str):
            cube_ids = [cube_ids]
        chosen: dict[str, float] = {}
        for cube in cube_ids:
            found = self.mos.vault.get_cube(cube)
            if user is not None and found.owner is not None and found.owner != user:
                continue
            for record in self.records(found.id):
                if record.status != READY:
                    continue
                if user is not None and record.item.owner not in (None, user):
                    continue
                self._ensure_loaded(record)
                chosen[record.bank_name] = scale
        return AdapterSelection.of(chosen, gated=gated)

    def gate_score(self, record: AdapterRecord, question: str) -> tuple[float, float] | None:
        """(score, threshold) of the adapter's gate for ``question``; None: no gate (an
        adapter stored before gates existed)."""
        self._ensure_loaded(record)
        return self.bank.gate_scores([record.bank_name], question).get(record.bank_name)

    def opens(self, record: AdapterRecord, question: str) -> bool:
        """Whether the adapter takes part in a request asking ``question``."""
        scored = self.gate_score(record, question)
        return scored is None or scored[0] >= scored[1]

    def load_selection(
        self, records: Sequence[AdapterRecord], scale: float = 1.0, *, gated: bool = True
    ) -> AdapterSelection:
        """These (ready) adapters, loaded now, as one request's selection."""
        for record in records:
            self._ensure_loaded(record)
        return AdapterSelection.of({r.bank_name: scale for r in records}, gated=gated)

    def _ensure_loaded(self, record: AdapterRecord) -> None:
        from safetensors import safe_open

        bank = self.bank
        if record.bank_name in bank:
            return
        with self._lock:
            if record.bank_name in bank:
                return
            try:
                with safe_open(str(record.path), framework="pt") as fh:
                    header = json.loads((fh.metadata() or {})[HEADER_KEY])
                    tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
            except (OSError, KeyError, ValueError) as exc:
                raise LLMError(f"adapter file {record.path} is missing or damaged: {exc}") from exc
            if header.get("id") != record.id:
                raise LLMError(f"adapter file {record.path} belongs to {header.get('id')}")
            if header["base_model"]["fingerprint"] != self.llm.model_fingerprint:
                raise LLMError(f"adapter {record.id} was trained for another base model")
            gate = AdapterGate.from_file(header.get("gate"), tensors)
            lora = {k: v for k, v in tensors.items() if not k.startswith(GATE_TENSORS)}
            bank.load(record.bank_name, LoraSpec.from_json(header["lora"]), lora)
            bank.set_gate(record.bank_name, gate)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        cube_ids: Sequence[str] | str,
        user: str | None = None,
        scale: float = 1.0,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        gated: bool = True,
    ) -> ChatResult:
        """Answer with the cubes' ready adapters attached (and nothing in the prompt); each
        adapter's gate decides from the last user message whether it takes part."""
        selection = self.selection(cube_ids, user=user, scale=scale, gated=gated)
        with self.bank.using(selection):
            return self.llm.chat(messages, max_new_tokens=max_new_tokens,
                                 temperature=temperature, stop=stop, seed=seed)

    # ------------------------------------------------------------------ retirement

    def retire(self, adapter_id: str, *, probe: bool = True) -> RetireResult:
        """Parametric -> plaintext: sources active again, probe answers kept for audit."""
        record = self.get(adapter_id)
        if record.status == RETIRED:
            raise ConflictError(f"adapter {adapter_id} is already retired")
        current = self.mos.vault.get_many([s["id"] for s in record.sources])
        probes: list[dict[str, Any]] = []
        if probe and record.status == READY:
            self._ensure_loaded(record)
            alive = [current[s["id"]] for s in record.sources if s["id"] in current]
            probes = self._probe(alive, record.bank_name)
        restore = [state_write(i, MemoryState.ACTIVE, "retire") for i in current.values()
                   if i.state == MemoryState.ARCHIVED]
        self.bank.remove(record.bank_name)
        retired = self._set_status(
            record, RETIRED, f"retired at {utcnow().isoformat(timespec='seconds')}",
            extra={"retire_probes": probes}, also=restore,
        )
        restored = [self.mos.get(s["id"]) for s in record.sources if s["id"] in current]
        return RetireResult(retired, restored, probes)
