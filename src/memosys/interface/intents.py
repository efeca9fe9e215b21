"""Explicit memory commands in natural language, parsed without an LLM.

* remember — "remember that I'm vegetarian", "please note: my flat is on floor 3",
  "keep in mind I hate mornings" -> the body becomes a candidate memory (typed by the rule
  extractor) and goes through reconciliation like any other.
* forget — "forget my old address", "forget that I like sushi", "delete what you know about
  my job" -> matching memories (and the raw episodes they came from) are soft-deleted; each
  records who asked, when and the request (``metadata["forgotten"]``).
* recall — "what do you know about me?", "what do you know about my job?" -> a listing of
  the person's active memories (or a search for the topic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from memosys.interface.reconcile import Decision
from memosys.operation.context import content_words
from memosys.types import MemoryItem

IntentKind = Literal["remember", "forget", "recall", "none"]

_LEAD = r"^\s*(?:(?:hey|ok|okay|so|and|also|please|pls|kindly)[\s,]+)*"
_REMEMBER = re.compile(
    _LEAD + r"(?:can you |could you |would you )?(?:remember|note(?: down)?|make a note|"
    r"keep in mind|don't forget|do not forget|save|store|memori[sz]e)"
    r"(?:\s+(?:that|this|the fact that))?\s*[:,]?\s+(?P<body>.+?)\s*[.!]?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_FORGET = re.compile(
    _LEAD + r"(?:can you |could you )?(?:forget|(?:delete|erase|remove|wipe|drop)"
    r"(?=\s+(?:the memor|my|what you know|what i said|that|everything|all)))"
    r"(?:\s+(?:about|that|everything about|all about|what you know about|what i said about|"
    r"the memory (?:about|that)|the memories about))?\s+(?P<body>.+?)\s*[.!]?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_RECALL = re.compile(
    r"^\s*(?:(?:so|hey|ok|please)[\s,]+)*(?:what do you (?:know|remember)|what have you "
    r"(?:learned|remembered|stored|saved)|what did you (?:learn|remember)|tell me what you "
    r"(?:know|remember)|(?:list|show)(?: me)? (?:(?:all|my|your) )*(?:memories|what you know))"
    r"(?:\s+about\s+(?P<topic>[^?.!]+?))?\s*[?.!]*\s*$",
    re.IGNORECASE,
)
_SELF = re.compile(r"^(?:me|myself|us|the user)$", re.IGNORECASE)
QUALIFIERS = re.compile(r"\b(?:old|previous|former|earlier|outdated|prior|ex)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Intent:
    kind: IntentKind
    body: str = ""
    """remember: what to store; forget: what to forget; recall: the topic ("" = everything)."""
    historical: bool = False
    """forget: the request names an old/previous value ("my old address")."""


@dataclass
class IntentResult:
    """What an explicit memory command did."""

    intent: IntentKind
    text: str
    items: list[MemoryItem] = field(default_factory=list)
    """remember: the memories written; forget: the memories deleted; recall: the listing."""
    decisions: list[Decision] = field(default_factory=list)
    message: str = ""


def parse_intent(text: str) -> Intent:
    """Classify one user message as a memory command (or ``none``)."""
    if not isinstance(text, str) or not text.strip():
        return Intent("none")
    stripped = text.strip()
    m = _RECALL.match(stripped)
    if m:
        topic = (m.group("topic") or "").strip()
        return Intent("recall", "" if _SELF.match(topic) else topic)
    m = _FORGET.match(stripped)
    if m and not stripped.endswith("?"):
        body = m.group("body").strip()
        if body.lower().startswith("to "):  # "don't forget to ..." is handled below
            return Intent("none")
        return Intent("forget", body, bool(QUALIFIERS.search(body)))
    m = _REMEMBER.match(stripped)
    if m and not stripped.endswith("?"):
        return Intent("remember", m.group("body").strip())
    return Intent("none")


def query_words(body: str, speaker: str | None) -> list[str]:
    """The words a memory must contain to match a forget request."""
    words = [w for w in content_words(QUALIFIERS.sub(" ", body))
             if w not in {"everything", "anything", "stuff", "thing", "things", "said", "know"}]
    if speaker:
        words = [w for w in words if w != speaker.lower()]
    return words


def contains_words(text: str, words: list[str]) -> bool:
    """Every word occurs at the start of some word of the text ("address" ~ "addresses")."""
    low = " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "
    return bool(words) and all(f" {w[:max(4, len(w) - 2)]}" in low for w in words)


__all__ = ["Intent", "IntentKind", "IntentResult", "contains_words", "parse_intent",
           "query_words"]
