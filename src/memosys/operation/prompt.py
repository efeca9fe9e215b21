"""How memories are written into a chat prompt (one rendering, shared by every form).

The system message is built from sections, most stable first, so that everything up to the
end of the stable sections is a *token prefix* of the whole prompt and can be served from an
activation (KV) cache::

    <base system prompt>\\n          level 0: the caller's system prompt (or the default)
    About the user:\\n- ...\\n        level 1: persona memories (the user's identity)
    Rules to follow:\\n- ...\\n       level 2: rule memories
    Background:\\n- ...\\n            level 3: memories promoted by the scheduler
    ----------------------------------- end of the cacheable prefix
    Things you remember ...:\\n- ...  query-specific retrieved memories (plaintext)

Every section ends with a newline and starts with a letter, so byte-level BPE never merges
tokens across a section boundary and the cached prefix tokenizes exactly as it does inside the
full prompt (checked at run time anyway: see :func:`memosys.operation.chat`).

The wording was chosen on SmolLM2-135M: an episode rendered as ``The user said: "..."`` is
recalled ("What is my name?" -> "Zorblax."), a bare first-person line is often taken as the
assistant's own identity.
"""

from __future__ import annotations

from collections.abc import Sequence

from memosys.infra.prompt_guard import neutralise
from memosys.types import MemoryItem, MemoryType

DEFAULT_SYSTEM = (
    "You are a helpful AI assistant talking with a user. You remember what the user tells you."
)

SECTION_TITLES: dict[str, str] = {
    "persona": "About the user:",
    "rules": "Rules to follow:",
    "background": "Background you know:",
    "retrieved": "Things you remember about the user from earlier conversations:",
    "procedure": "Procedures that worked before for tasks like this one:",
}

STABLE_SECTIONS = ("persona", "rules", "background")
"""Cacheable sections, in prefix order (most stable first)."""


def section_of(item: MemoryItem) -> str:
    """The stable section a pinned memory belongs to."""
    if item.memory_type == MemoryType.PERSONA:
        return "persona"
    if item.memory_type == MemoryType.RULE:
        return "rules"
    return "background"


def render_memory(item: MemoryItem) -> str:
    """One memory as one bullet line (no trailing newline)."""
    # Memory text is data: one line (a newline would break the bullets) with no chat-template
    # tokens or role prefixes that could pass for prompt structure.
    text = neutralise(item.text)
    if item.memory_type == MemoryType.EPISODE:
        role = item.source.role
        if role == "assistant":
            return f'- You said: "{text}"'
        if role in (None, "user"):
            return f'- The user said: "{text}"'
    return f"- {text}"


def render_section(name: str, items: Sequence[MemoryItem]) -> str:
    if not items:
        return ""
    lines = [SECTION_TITLES[name], *(render_memory(i) for i in items)]
    return "\n".join(lines) + "\n"


def stable_text(base_system: str, sections: dict[str, Sequence[MemoryItem]]) -> str:
    """Base system prompt plus the stable sections: the cacheable part of the system message."""
    parts = [base_system.rstrip() + "\n"]
    parts.extend(render_section(name, sections.get(name, ())) for name in STABLE_SECTIONS)
    return "".join(parts)


def system_message(stable: str, retrieved: Sequence[MemoryItem]) -> str:
    """The whole system message: the stable part, then the query-specific memories (skills
    found for the query as the procedure block, after the rest)."""
    skills = [i for i in retrieved if i.memory_type == MemoryType.SKILL]
    others = [i for i in retrieved if i.memory_type != MemoryType.SKILL]
    return stable + render_section("retrieved", others) + render_section("procedure", skills)
