"""The Memory API's feature entry points, mixed into `MemOS`: chat with the scheduler and
the bound model, parametric memory, the semantic graph and topic index, extraction rules,
tool and skill memory, consolidation and change events. Each is a thin door to its own
module (named in each section), so `MemOS` itself keeps to cubes, memories, search and
versions; the methods use the runtime's `settings`, `vault`, `retriever` and governance
views as `MemOS` sets them up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memosys.memories.parametric import ParametricMemory
    from memosys.models.llm import LLM
    from memosys.operation.chat import ChatResult, ChatStream
    from memosys.operation.consolidate import ConsolidationRun
    from memosys.operation.consolidate_plan import ConsolidationConfig
    from memosys.operation.graph import MemoryGraphAPI
    from memosys.operation.scheduler import MemScheduler
    from memosys.operation.skills import DistilReport, SkillMatch, SkillMemory
    from memosys.operation.topics import Overview, Topic, TopicsAPI
    from memosys.system import Message
    from memosys.system_events import EventsAPI
    from memosys.types import MemoryItem


class FeaturesAPI:
    # --- chat, scheduler and bound model (memosys.operation.chat / .scheduler) --------
    def chat(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        cube_ids: Sequence[str] | str | None = None,
        user: str | None = None,
        session: str | None = None,
        stream: bool = False,
        max_tokens: int = 256,
        temperature: float = 0.0,
        remember: bool = True,
    ) -> ChatResult | ChatStream:
        """Answer a conversation with memory; returns a `ChatResult`, or with `stream=True`
        a `ChatStream`.

        `messages`: `Message` objects or `{"role", "content"}` dicts (system, user,
        assistant), the last one the user's. `cube_ids`: cubes (names or ids) to read from;
        the first is where new turns are written (default: the cube "default", created if
        needed). The MemScheduler picks the memories for the last user message and their
        form (activation cache or plaintext) within a prompt token budget; the bound model
        (`settings.llm`: local SmolLM2 or OpenAI-compatible) answers, greedy at temperature
        0. With `remember` the new user turns and the answer are stored as episodes through
        the MemReader (searchable at once; extraction queued as a job).

        `ChatResult` (memosys.operation.chat): `text`, `decisions` (list of
        `MemoryDecision`: memory_id, cube_id, version, memory_type, form
        activation|plaintext|skipped, section, reason, tokens, score), `usage`
        (prompt_tokens, completion_tokens, cached_tokens, total_tokens), `finish_reason`,
        `model`, `cube_id`, `cube_ids`, `scheduling_id`, `events`, `activation`, `written`,
        `job_id`, `ttft_s`; `.as_dict()` is JSON-ready.
        `ChatStream`: iterate it for text deltas (str); once exhausted its `.result` is the
        `ChatResult` (turns are written back at the end; `.close()` early writes nothing)."""
        from memosys.operation.chat import run_chat

        return run_chat(self, messages, cube_ids=cube_ids, user=user, session=session,
                        stream=stream, max_tokens=max_tokens, temperature=temperature,
                        remember=remember)

    @property
    def scheduler(self) -> MemScheduler:
        """The MemScheduler (decisions, promotions, background jobs), created on first use.
        Views of this runtime should share it (the `_scheduler` attribute)."""
        if getattr(self, "_scheduler", None) is None:
            from memosys.operation.scheduler import MemScheduler

            self._scheduler = MemScheduler(self)
        return self._scheduler  # type: ignore[return-value]

    @scheduler.setter
    def scheduler(self, value: MemScheduler) -> None:
        self._scheduler = value

    @property
    def llm(self) -> LLM:
        """The bound chat model (`settings.llm`; shared per process), created on first use."""
        if getattr(self, "_llm", None) is None:
            from memosys.models.llm import make_llm

            s = self.settings
            self._llm = make_llm(s.llm, base_url=s.llm_base_url, api_key=s.llm_api_key,
                                 cache_dir=s.llm_cache_dir, home=s.home)
        return self._llm  # type: ignore[return-value]

    @llm.setter
    def llm(self, value: LLM) -> None:
        self._llm = value


    # --- parametric memory (memosys.memories.parametric) -----------------------------
    @property
    def parametric(self) -> ParametricMemory:
        """LoRA adapters distilled from memories: distil, serve, retire (docs/parametric.md)."""
        if getattr(self, "_parametric", None) is None:
            from memosys.memories.parametric import ParametricMemory

            self._parametric = ParametricMemory(self)
        return self._parametric  # type: ignore[return-value]

    # --- semantic graph (memosys.operation.graph; docs/graph.md) ----------------------
    def _setup_graph(self) -> None:
        from memosys.infra.vault.graph_base import GraphStore

        if self.settings.graph and isinstance(self.vault, GraphStore):
            from memosys.operation.graph_extract import extract_graph

            self.vault.set_graph_deriver(extract_graph)
        if self.settings.graph_search:
            from memosys.operation.graph_search import GraphStage

            self.retriever.insert_stage(GraphStage(self.vault))
        self._setup_topics()

    @property
    def graph(self) -> MemoryGraphAPI:
        """Entities, relations and their history in a cube (build, entity, neighbours,
        facts as of a date, timeline, changes, path, memories)."""
        from memosys.operation.graph import MemoryGraphAPI

        return MemoryGraphAPI(self)

    # --- extraction rules per cube (memosys.system_extraction; docs/extraction-rules.md) --
    def extraction_rules(self, cube: str) -> dict[str, Any]:
        """The cube's extraction config: categories, rules, instructions, version."""
        from memosys.system_extraction import get_rules

        return get_rules(self, cube)

    def set_extraction_rules(
        self,
        cube: str,
        *,
        categories: Sequence[Any] | None = None,
        rules: Sequence[Any] | None = None,
        instructions: str | None = None,
        threshold: float | None = None,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        """Replace the given parts (None keeps a part) of the cube's categories
        ({name, description, keywords}), rules ({id, name, kind deny|allow, keywords,
        patterns, pii, category, description}) and model instructions; needs the cube's
        `share` permission. Deny rules hold on every write path from now on; nothing
        stored is changed."""
        from memosys.system_extraction import set_rules

        return set_rules(self, cube, categories=categories, rules=rules,
                         instructions=instructions, threshold=threshold,
                         expected_version=expected_version)

    def test_extraction_rules(self, cube: str, text: str) -> dict[str, Any]:
        """Dry run: which rule refuses `text`, which categories it gets (nothing written)."""
        from memosys.arg_checks import text_arg
        from memosys.system_extraction import dry_run

        return dry_run(self, cube, text_arg("text", text))

    # --- tool and skill memory (memosys.operation.skills; docs/skills.md) -------------
    @property
    def skills(self) -> SkillMemory:
        """Tool calls, trajectories and skills of this runtime (or view): record, distil,
        find, list, get."""
        from memosys.operation.skills import SkillMemory

        return SkillMemory(self)

    def record_tool_call(
        self, cube: str, tool: str, arguments: dict[str, Any] | None = None,
        result: Any = None, success: bool = True, duration_ms: float | None = None,
        task: str | None = None, trajectory_id: str | None = None, **source: Any,
    ) -> MemoryItem:
        """Store one tool call (a `tool_call` memory: tool, arguments, result, success,
        duration; `error`, `user`, `agent`, `session` as keywords). With `trajectory_id`,
        `record_trajectory` can later collect it as a step."""
        return self.skills.record_tool_call(cube, tool, arguments, result, success,
                                            duration_ms, task=task,
                                            trajectory_id=trajectory_id, **source)

    def record_trajectory(
        self, cube: str, task: str, steps: Sequence[Any] | None = None,
        success: bool = True, **options: Any,
    ) -> MemoryItem:
        """Store one agent run for `task` (a `trajectory` memory): `steps` as tool calls
        ({tool, arguments, result, success, duration_ms, error}), or none to collect the
        calls recorded with `trajectory_id`. Keywords: outcome, trajectory_id, user, agent,
        session, distil (default True: a successful run queues a skills_distil job)."""
        return self.skills.record_trajectory(cube, task, steps, success, **options)

    def distil_skills(self, cube: str, **options: Any) -> DistilReport:
        """Distil the cube's similar successful trajectories into skill memories
        (idempotent). Keywords: min_support (3), use_model (False), dry_run (False)."""
        return self.skills.distil(cube, **options)

    def find_skills(self, cube: str | Sequence[str], task: str, top_k: int = 3,
                    *, threshold: float | None = None) -> list[SkillMatch]:
        """Skills that apply to `task`, best first; none when no skill is similar enough
        (`threshold`, default SkillConfig.find_threshold)."""
        return self.skills.find(cube, task, top_k, threshold=threshold)

    # --- topic index (memosys.operation.topics; docs/graph.md "Topics") ---------------
    def _setup_topics(self) -> None:
        from memosys.infra.vault.topic_sql import SQLTopics, TopicPolicy

        if self.settings.topics and isinstance(self.vault, SQLTopics):
            self.vault.set_topic_policy(TopicPolicy(threshold=self.settings.topic_threshold))
        if self.settings.topic_search:
            from memosys.operation.topics import TopicStage

            self.retriever.insert_stage(TopicStage(self.vault))

    @property
    def topic_index(self) -> TopicsAPI:
        """Topics of a cube: list, get, memories, rebuild, summarise (model), overview."""
        from memosys.operation.topics import TopicsAPI

        return TopicsAPI(self)

    def topics(self, cube_id: str, *, limit: int = 100) -> list[Topic]:
        """The cube's topics (clusters of its memories), largest first."""
        return self.topic_index.list(cube_id, limit=limit)

    def topic(self, topic_id: str) -> Topic:
        return self.topic_index.get(topic_id)

    def overview(self, cube_id: str, user: str | None = None) -> Overview:
        """"What do you know about me": the main topics and entities of a cube (of one
        user's memories, if given)."""
        return self.topic_index.overview(cube_id, user)

    # --- consolidation (memosys.operation.consolidate; docs/consolidation.md) ----------
    def consolidate(self, cube: str, dry_run: bool = False, *,
                    config: ConsolidationConfig | dict[str, Any] | None = None,
                    wait: bool = True) -> ConsolidationRun:
        """Merge near-duplicates, synthesise profiles and topic summaries, queue
        contradictions for review; returns the run (id, plan, changes). `dry_run`: plan
        only. `wait=False`: queue the run for the scheduler's worker."""
        from memosys.operation.consolidate import Consolidator

        return Consolidator(self).run(cube, dry_run=dry_run, config=config, wait=wait)

    def consolidation_run(self, run_id: str) -> ConsolidationRun:
        from memosys.operation.consolidate import Consolidator

        return Consolidator(self).get_run(run_id)

    def consolidation_stale(self, cube: str) -> list[tuple[MemoryItem, str]]:
        """Synthesised memories whose sources changed since they were written, with why
        (flagged: the next consolidation run regenerates them)."""
        from memosys.operation.consolidate import Consolidator

        return Consolidator(self).stale(cube)

    def rollback_consolidation(self, run_id: str) -> ConsolidationRun:
        """Undo a whole consolidation run as one unit (one atomic commit)."""
        from memosys.operation.consolidate import Consolidator

        return Consolidator(self).rollback(run_id)

    # --- change events (memosys.system_events; docs/events.md) -------------------------
    @property
    def events(self) -> EventsAPI:
        """The event log, its SSE/webhook delivery, and `publish` for components."""
        from memosys.system_events import EventsAPI

        return EventsAPI(self)
