"""The LLM extractor: a model proposes memories, memosys validates and normalises them.

Two output formats behind one class:

* ``json`` — a JSON object ``{"memories": [{"type", "text", "time"}]}``, parsed with
  :func:`memosys.interface.jsonrepair.parse_json`; meant for capable (remote) models.
* ``lines`` — one ``type: text`` per line, or ``none``; easier for a 135M model.

Whatever the model says is checked: the type must be one of the five derived types, the
text must be grounded in the message (most of its content words occur there — a small
model otherwise copies its few-shot examples), times are resolved by timeparse (never the
model's arithmetic) and first person is rewritten. Unusable output becomes an entry in
``Extraction.errors``; the turn (already stored as an episode) is never lost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from memosys.errors import LLMError
from memosys.interface.extract import Candidate, Extraction, Turn, make_candidate
from memosys.interface.jsonrepair import StructuredOutputError, as_object_list, parse_json
from memosys.interface.rewrite import time_mentions
from memosys.models.llm import LLM
from memosys.operation.context import content_words
from memosys.types import MemoryType

_TYPES = {t.value: t for t in (MemoryType.FACT, MemoryType.PREFERENCE, MemoryType.EVENT,
                               MemoryType.RULE, MemoryType.PERSONA)}
_TYPE_ALIASES = {"facts": "fact", "preferences": "preference", "events": "event",
                 "rules": "rule", "instruction": "rule", "instructions": "rule",
                 "personas": "persona", "profile": "persona", "identity": "persona",
                 "like": "preference", "dislike": "preference", "plan": "event"}
_GENERIC = {"user", "speaker", "likes", "like", "prefers", "prefer", "loves", "love", "enjoys",
            "rule", "person", "fact", "event", "preference", "persona", "wants", "said", "says"}

JSON_SYSTEM = (
    "You extract long-term memories from one chat message. Reply with JSON only: "
    '{"memories": [{"type": "...", "text": "...", "time": "..."}]}.\n'
    "type is one of: fact, preference, event, rule, persona.\n"
    "- preference: likes, dislikes, favourites. rule: an instruction to the assistant "
    "(always/never/please don't/from now on). persona: identity, job, name, age, where they "
    "live. event: something that happened or is planned at a time. fact: anything else "
    "lasting.\n"
    "- text: one standalone sentence in the third person that names the speaker.\n"
    '- time: the time expression exactly as written in the message ("yesterday", "last '
    'week"), or "" if none. Do not compute dates.\n'
    '- Greetings, questions, thanks and small talk: {"memories": []}.'
)
JSON_SHOTS = [
    ("[Maya, 2023-04-02] I adopted a cat last week and I love her already!",
     '{"memories": [{"type": "event", "text": "Maya adopted a cat last week", "time": '
     '"last week"}, {"type": "preference", "text": "Maya loves her new cat", "time": ""}]}'),
    ("[Leo, 2022-10-11] Hey, how are you doing?", '{"memories": []}'),
    ("[Ana, 2024-01-20] Please never send me emails on weekends. I'm a dentist in Porto.",
     '{"memories": [{"type": "rule", "text": "Never send Ana emails on weekends", "time": ""}, '
     '{"type": "persona", "text": "Ana is a dentist in Porto", "time": ""}]}'),
]
LINES_SYSTEM = (
    "Write down what the message says about the speaker. One memory per line as "
    "'type: sentence'. type is fact, preference, event, rule or persona. Name the speaker in "
    "each sentence. Write 'none' for greetings, questions and small talk."
)
LINES_SHOTS = [
    ("Maya: I adopted a cat last week and I love her already!",
     "event: Maya adopted a cat last week\npreference: Maya loves her cat"),
    ("Leo: Hey, how are you doing?", "none"),
    ("Ana: Please never send me emails on weekends.", "rule: Never send Ana emails on weekends"),
    ("Ben: I'm a dentist and I hate cold weather.",
     "persona: Ben is a dentist\npreference: Ben hates cold weather"),
]
_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*\**\s*([A-Za-z]+)\**\s*[:\-–|]\s*(.+?)\s*$")


def _grounded(text: str, turn: Turn) -> bool:
    """Most content words of a proposed memory occur in the message (prefix match)."""
    speaker = (turn.speaker or "").lower()
    words = [w for w in content_words(text) if w != speaker and w not in _GENERIC
             and not w.startswith(speaker + "'") and not re.match(r"^\d", w)]
    words = [w for w in words if w not in {"january", "february", "march", "april", "may",
                                            "june", "july", "august", "september", "october",
                                            "november", "december", "mentioned"}]
    if not words:
        return False
    source = " " + " ".join(content_words(turn.text)) + " "
    present = sum(1 for w in words if f" {w[:5]}" in source)
    return present / len(words) >= 0.6


def _memory_type(raw: Any) -> MemoryType | None:
    if not isinstance(raw, str):
        return None
    key = raw.strip().lower()
    key = _TYPE_ALIASES.get(key, key)
    return _TYPES.get(key)


class LLMExtractor:
    """Extraction by a chat model, one call per turn (plus `context_turns` before it)."""

    name = "llm"

    def __init__(
        self,
        llm: LLM,
        *,
        fmt: str = "auto",
        context_turns: int | None = None,
        include_assistant: bool = False,
        max_new_tokens: int | None = None,
    ) -> None:
        if fmt not in ("auto", "json", "lines"):
            raise ValueError(f"format must be auto, json or lines, got {fmt!r}")
        self.llm = llm
        self.fmt = fmt if fmt != "auto" else ("lines" if is_small(llm) else "json")
        self.context_turns = (0 if self.fmt == "lines" else 2) if context_turns is None \
            else context_turns
        self.include_assistant = include_assistant
        self.max_new_tokens = max_new_tokens or (96 if self.fmt == "lines" else 400)
        self.backend = f"llm:{llm.id}:{self.fmt}"
        self.guidance = ""
        """The cube's instructions, rules and categories (memosys.system_extraction.guided)."""
        self.categories: tuple[str, ...] = ()

    def extract(self, turns: Sequence[Turn], context: Sequence[Turn] = ()) -> Extraction:
        out = Extraction()
        full = [*context, *turns]
        for i in range(len(context), len(full)):
            turn = full[i]
            if turn.role == "assistant" and not self.include_assistant:
                continue
            shown = full[max(0, i - self.context_turns):i] if self.context_turns else []
            try:
                result = self.llm.chat(self.messages(turn, shown),
                                       max_new_tokens=self.max_new_tokens, temperature=0.0)
            except LLMError as exc:
                out.errors.append(f"{_where(turn)}: model call failed: {exc}")
                continue
            out.calls += 1
            try:
                items = self.parse(result.text)
            except StructuredOutputError as exc:
                out.errors.append(f"{_where(turn)}: unusable model output: {exc}")
                continue
            rejected = 0
            for kind, text, time_text, category in items:
                cand = self.candidate(turn, kind, text, time_text)
                if cand is None:
                    rejected += 1
                elif not any(c.text == cand.text for c in out.candidates):
                    if category in self.categories:
                        cand.tags = [*cand.tags, f"category:{category}"]
                    out.candidates.append(cand)
            if rejected:
                out.errors.append(f"{_where(turn)}: dropped {rejected} proposed memories "
                                  "(unknown type or not grounded in the message)")
        return out

    # --- prompts -------------------------------------------------------------------------
    def messages(self, turn: Turn, context: Sequence[Turn]) -> list[dict[str, str]]:
        guidance = f"\n{self.guidance}" if self.guidance else ""
        if self.fmt == "json":
            msgs = [{"role": "system", "content": JSON_SYSTEM + guidance}]
            for user, answer in JSON_SHOTS:
                msgs += [{"role": "user", "content": user},
                         {"role": "assistant", "content": answer}]
            lines = [f"(earlier) {_label(t)} {t.text}" for t in context]
            lines.append(f"{_label(turn)} {turn.text}")
            msgs.append({"role": "user", "content": "\n".join(lines)})
            return msgs
        msgs = [{"role": "system", "content": LINES_SYSTEM + guidance}]
        for user, answer in LINES_SHOTS:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        msgs.append({"role": "user", "content": f"{turn.speaker or 'User'}: {turn.text}"})
        return msgs

    # --- parsing -------------------------------------------------------------------------
    def parse(self, output: str
              ) -> list[tuple[MemoryType | None, str, str | None, str | None]]:
        """(type, text, time, category) tuples; StructuredOutputError when nothing is
        usable. A category comes only from JSON output (asked for by the guidance)."""
        if self.fmt == "json":
            value = parse_json(output)
            found = []
            for obj in as_object_list(value, "memories"):
                text = obj.get("text") or obj.get("memory") or obj.get("content")
                if not isinstance(text, str):
                    continue
                when = obj.get("time")
                category = obj.get("category")
                found.append((_memory_type(obj.get("type")), text,
                              when if isinstance(when, str) and when.strip() else None,
                              category.strip() if isinstance(category, str) else None))
            return found
        text = output.strip()
        if not text:
            raise StructuredOutputError("the model returned no output")
        found = []
        for line in text.splitlines():
            if line.strip().lower().strip(".") in ("none", "nothing", "n/a"):
                continue
            m = _LINE.match(line)
            if m:
                found.append((_memory_type(m.group(1)), m.group(2), None, None))
        if not found and not re.match(r"^\s*(none|nothing)\b", text, re.IGNORECASE):
            preview = text.replace("\n", " ")[:120]
            raise StructuredOutputError(f"no 'type: text' lines in the model output: {preview!r}")
        return found

    def candidate(
        self, turn: Turn, kind: MemoryType | None, text: str, time_text: str | None
    ) -> Candidate | None:
        text = text.strip().strip('"').strip()
        if kind is None or not text or len(text) > 500 or not _grounded(text, turn):
            return None
        if time_text is None and kind == MemoryType.EVENT and turn.timestamp is not None:
            mentions = time_mentions(turn.text, turn.timestamp)
            time_text = mentions[0].text if mentions else None
        return make_candidate(turn, text, kind, self.name, time_text=time_text)


def is_small(llm: LLM) -> bool:
    """The embedded 135M model: weak at JSON and at judging contradictions."""
    return str(getattr(llm, "id", "")).startswith("local")


def _label(turn: Turn) -> str:
    when = turn.timestamp.date().isoformat() if turn.timestamp else "undated"
    return f"[{turn.speaker or turn.role}, {when}]"


def _where(turn: Turn) -> str:
    return f"episode {turn.episode_id}" if turn.episode_id else "turn"
