"""Chat with memory: ``MemOS.chat`` reads memories through the scheduler, generates with the
bound model (local SmolLM2 or an OpenAI-compatible endpoint), streams, and writes the new
turns back through the MemReader.

One call:

1. the conversation is validated (``Message`` objects or ``{"role", "content"}`` dicts; the
   last message must be the user's); system messages become the base system prompt;
2. :meth:`MemScheduler.plan <memosys.operation.scheduler.MemScheduler.plan>` picks the
   memories and their form for the last user message;
3. the system message is rendered (:mod:`memosys.operation.prompt`) and the model generates;
   with the local model and a ready activation cache, generation continues from the cache
   (checked to be an exact token prefix of this prompt, so the answer is the one the full
   prompt gives);
4. when ``remember`` is true, the new turns (the user messages after the last assistant
   message, and the answer) are stored as episodes with ``MemOS.add(..., infer=True,
   wait=False)``: searchable at once, extraction queued as a durable job for the
   scheduler's worker; then usage statistics are recorded (promotion, see the scheduler).

All memory reads and writes go through the runtime's public methods on the ``MemOS`` given
(``search``, ``list``, ``get``, ``add``), so a governed view's permission checks apply.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from memosys.errors import LLMError, ValidationError
from memosys.memories.parametric_schedule import adapters_for_call
from memosys.operation.prompt import DEFAULT_SYSTEM, system_message
from memosys.operation.scheduler import MemoryDecision
from memosys.types import validated

if TYPE_CHECKING:
    from memosys.models.llm import LLM
    from memosys.models.llm import ChatResult as LLMResult
    from memosys.system import MemOS, Message

DEFAULT_CUBE = "default"
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int = 0
    """Prompt tokens served from an activation cache instead of being re-read."""

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatResult:
    """The answer of one ``MemOS.chat`` call, with what the scheduler put in the prompt."""

    text: str
    decisions: list[MemoryDecision]
    """One per memory considered: ``form`` activation | plaintext | skipped, and ``reason``."""
    usage: Usage
    finish_reason: str
    model: str
    cube_id: str
    """The cube the turns were written to (the first of ``cube_ids``)."""
    cube_ids: list[str]
    scheduling_id: str
    """Id of the :class:`~memosys.operation.scheduler.SchedulingRecord` of this call."""
    events: list[str] = field(default_factory=list)
    """Scheduler events of this call: promotions, demotions, queued cache builds."""
    activation: dict[str, Any] | None = None
    """The activation cache used, or None (text in the prompt)."""
    written: list[str] = field(default_factory=list)
    """Ids of the episode memories stored for the new turns (``remember=True``)."""
    job_id: str | None = None
    """The queued extraction job for those episodes."""
    ttft_s: float | None = None
    """Seconds from the call to the first generated text."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["usage"]["total_tokens"] = self.usage.total_tokens
        return out


class ChatStream(Iterator[str]):
    """``MemOS.chat(stream=True)``: iterate for text deltas; once exhausted, :attr:`result`
    holds the :class:`ChatResult` (and the turns have been written back)."""

    def __init__(self, run: Generator[str, None, ChatResult]) -> None:
        self._run = run
        self._result: ChatResult | None = None

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str:
        if self._result is not None:
            raise StopIteration
        try:
            return next(self._run)
        except StopIteration as done:
            self._result = done.value
            raise StopIteration from None

    @property
    def result(self) -> ChatResult:
        if self._result is None:
            raise LLMError("the chat stream has not finished yet: iterate it to the end first")
        return self._result

    def close(self) -> None:
        """Stop early: nothing is written back."""
        self._run.close()


def run_chat(
    mos: MemOS,
    messages: Sequence[Message | dict[str, Any]],
    *,
    cube_ids: Sequence[str] | str | None = None,
    user: str | None = None,
    session: str | None = None,
    stream: bool = False,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
    remember: bool = True,
) -> ChatResult | ChatStream:
    """See :meth:`memosys.system.MemOS.chat`."""
    started = time.perf_counter()
    conversation = _conversation(messages)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not (
        1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise ValidationError(f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}")
    if not isinstance(temperature, int | float) or not 0.0 <= float(temperature) <= 2.0:
        raise ValidationError("temperature must be a number from 0 to 2")
    cubes = _cubes(mos, cube_ids)
    run = _generate(mos, conversation, cubes, user=user, session=session,
                    max_tokens=max_tokens, temperature=float(temperature),
                    remember=remember, started=started, stream=stream)
    chat_stream = ChatStream(run)
    if stream:
        return chat_stream
    for _ in chat_stream:
        pass
    return chat_stream.result


def _conversation(messages: Sequence[Message | dict[str, Any]]) -> list[Message]:
    from memosys.system import Message

    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise ValidationError("messages must be a non-empty list of {role, content} messages")
    out: list[Message] = []
    for i, raw in enumerate(messages):
        if isinstance(raw, Message):
            msg = raw
        elif isinstance(raw, dict):
            msg = validated(Message, **raw)
        else:
            raise ValidationError(f"message {i} must be a dict or Message, "
                                  f"got {type(raw).__name__}")
        if msg.role not in ("system", "user", "assistant"):
            raise ValidationError(f"message {i} has role {msg.role!r}; expected system, "
                                  "user or assistant")
        out.append(msg)
    if out[-1].role != "user":
        raise ValidationError("the last message must be the user's (role 'user')")
    return out


def _cubes(mos: MemOS, cube_ids: Sequence[str] | str | None) -> list[str]:
    if cube_ids is None:
        return [mos.ensure_cube(DEFAULT_CUBE).id]
    names = [cube_ids] if isinstance(cube_ids, str) else list(cube_ids)
    if not names:
        raise ValidationError("cube_ids must name at least one cube (or be omitted)")
    return [mos.get_cube(name).id for name in names]


def _generate(
    mos: MemOS,
    conversation: list[Message],
    cubes: list[str],
    *,
    user: str | None,
    session: str | None,
    max_tokens: int,
    temperature: float,
    remember: bool,
    started: float,
    stream: bool,
) -> Generator[str, None, ChatResult]:
    from memosys.models.local_llm import LocalLLM

    llm: LLM = mos.llm
    local = llm if isinstance(llm, LocalLLM) else None
    system_parts = [m.content for m in conversation if m.role == "system"]
    base_system = "\n".join(system_parts) if system_parts else DEFAULT_SYSTEM
    turns = [m for m in conversation if m.role != "system"]
    query = turns[-1].content
    plan = mos.scheduler.plan(
        mos, query, cubes, base_system=base_system, model=llm.id,
        count_tokens=_counter(local), local_llm=local,
        exclude_texts=[m.content for m in turns],
    )
    prompt = [{"role": "system", "content": system_message(plan.stable_text, plan.retrieved)}]
    prompt += [{"role": m.role, "content": m.content} for m in turns]
    options: dict[str, Any] = {"max_new_tokens": max_tokens, "temperature": temperature}

    cached = 0
    if local is not None:
        ids = local.apply_chat_template(prompt)
        activation = plan.activation
        if activation is not None and plan.adapters:
            # The cache holds base-model activations; with adapters the prefix differs.
            plan.record.events.append("cache not used: parametric adapters attached")
            plan.record.activation = None
            activation = None
        if activation is not None and ids[: activation.n_tokens] != activation.token_ids:
            # Never generate from a cache that is not exactly this prompt's prefix.
            plan.record.events.append("cache not used: prompt prefix tokenized differently")
            plan.record.activation = None
            activation = None
        with adapters_for_call(local, plan.adapters):  # captured when the stream starts
            if activation is not None:
                cached = activation.n_tokens
                run = local.stream_from_cache(activation.cache, cached, ids[cached:],
                                              **options)
            else:
                run = local.stream(prompt, **options)
        prompt_tokens: int | None = len(ids)
    elif stream:
        run = llm.stream(prompt, **options)
        prompt_tokens = None  # a streamed OpenAI-style answer reports no usage
    else:
        answer = llm.chat(prompt, **options)
        run = _once(answer)
        prompt_tokens = answer.prompt_tokens
    plan.record.prompt_tokens = prompt_tokens
    plan.record.cached_tokens = cached

    pieces: list[str] = []
    ttft: float | None = None
    finish = "stop"
    completion: int | None = None
    iterator = iter(run)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration as done:
            final = done.value
            if final is not None:  # the local model returns its ChatResult at the end
                finish, completion = final.finish_reason, final.completion_tokens
            break
        if ttft is None:
            ttft = time.perf_counter() - started
        pieces.append(chunk)
        yield chunk
    text = "".join(pieces)
    result = ChatResult(
        text=text, decisions=list(plan.record.decisions),
        usage=Usage(prompt_tokens, completion, cached), finish_reason=finish, model=llm.id,
        cube_id=cubes[0], cube_ids=cubes, scheduling_id=plan.record.id,
        activation=plan.record.activation, ttft_s=None if ttft is None else round(ttft, 4),
    )
    if remember:
        _remember(mos, result, turns, text, user=user, session=session)
    if plan.activation is not None and cached:
        mos.scheduler.activation_store(local).touch(plan.activation)  # type: ignore[arg-type]
    mos.scheduler.after_answer(plan)
    result.events = list(plan.record.events)
    return result


def _remember(mos: MemOS, result: ChatResult, turns: list[Message], answer: str, *,
              user: str | None, session: str | None) -> None:
    from memosys.system import Message

    last_assistant = max((i for i, m in enumerate(turns) if m.role == "assistant"), default=-1)
    new = [m for m in turns[last_assistant + 1 :] if m.role == "user"]
    if answer.strip():
        new.append(Message(role="assistant", content=answer))
    stored = mos.add(result.cube_id, messages=new, user=user, session=session,
                     infer=True, wait=False)
    result.written = [i.id for i in stored]
    job = getattr(stored, "job", None)
    result.job_id = job.id if job is not None else None
    if job is not None:
        mos.scheduler.notify()  # the worker runs the extraction in the background


def _once(answer: LLMResult) -> Generator[str, None, LLMResult]:
    if answer.text:
        yield answer.text
    return answer


def _counter(local: Any) -> Any:
    if local is None:
        return lambda text: max(1, (len(text) + 3) // 4)  # remote: ~4 characters per token
    tok = local.tokenizer
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
