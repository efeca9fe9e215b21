"""Query analysis for retrieval: who a question is about, when, and what it asks for.

Everything here is plain pattern matching on the query text (no model, no network), so it
costs microseconds and behaves the same on any conversation:

- **persons**: known speakers of the searched cubes named in the query ("What did
  Caroline research?" -> Caroline; "Mel" matches Melanie by prefix);
- **time ranges**: absolute time expressions ("on 8 May, 2023", "in December 2023",
  "in 2022", "in summer 2021", "in June") as event-time ranges;
- **asks_time**: the question asks for a time ("When ...", "How long ago ...", "What
  year ..."), so turns that carry a time expression are likelier answers.

Relative expressions in the query ("last week") are left alone: they are relative to when
the question is asked, which says nothing about when the remembered event happened.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from memosys.infra.vault.fts_query import STOPWORDS
from memosys.operation.timeparse import find_absolute_times

TIME_EXPRESSION = re.compile(
    r"\b(?:yesterday|today|tonight|tomorrow|last|next|ago|week|weeks|weekend|weekends|month"
    r"|months|year|years|recently|lately|since|monday|tuesday|wednesday|thursday|friday"
    r"|saturday|sunday|january|february|march|april|june|july|august|september|october"
    r"|november|december|(?:19|20)\d\d|morning|evening|earlier|soon|summer|winter|spring"
    r"|autumn|birthday|anniversary|holiday|holidays)\b",
    re.I,
)
"""Words that anchor a statement in time (for answer-type matching of "when" questions).
"May" is left out on purpose: as a verb it is far more common in conversation."""

_ASKS_TIME = re.compile(
    r"^\W*(?:when\b|what\s+(?:year|month|day|date|time|week)\b|which\s+(?:year|month|day"
    r"|date|week)\b|how\s+long\b|since\s+when\b|in\s+what\s+(?:year|month)\b)",
    re.I,
)
_NAME = re.compile(r"\b[A-Z][\w'’-]*")


@dataclass(frozen=True)
class TimeRange:
    """A span of event time [start, end) named by the query."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class QueryAnalysis:
    text: str
    persons: tuple[str, ...] = ()
    """Known speakers named in the query, in order of appearance."""
    time_ranges: tuple[TimeRange, ...] = ()
    months: tuple[int, ...] = field(default_factory=tuple)
    """Months named without a year ("in June"): any year matches."""
    asks_time: bool = False

    @property
    def has_time(self) -> bool:
        return bool(self.time_ranges or self.months)


def parse_time(text: str) -> tuple[tuple[TimeRange, ...], tuple[int, ...]]:
    """Absolute time expressions in `text`: (event-time ranges, year-less months). The
    grammar is `timeparse`'s, the one the MemReader resolves memories' times with."""
    mentions, months = find_absolute_times(text)
    ranges: list[TimeRange] = []
    for m in mentions:
        found = TimeRange(m.start, m.end)
        if found not in ranges:
            ranges.append(found)
    return tuple(ranges), tuple(months)


def find_persons(text: str, speakers: Iterable[str]) -> tuple[str, ...]:
    """Known speakers named in `text`: a capitalised word equal to a speaker's name (or its
    first name), or a prefix of at least three letters of it ("Mel" for "Melanie")."""
    by_word: dict[str, list[str]] = {}
    for speaker in speakers:
        words = speaker.split()
        if words:
            by_word.setdefault(words[0].lower(), []).append(speaker)
    found: list[str] = []
    for m in _NAME.finditer(text):
        word = re.sub(r"(?:'s|’s|'|’)$", "", m.group(0)).lower()
        if len(word) < 3:
            continue
        for first, names in by_word.items():
            if first == word or (word not in STOPWORDS and first.startswith(word)):
                found.extend(n for n in names if n not in found)
    return tuple(found)


def analyze_query(text: str, speakers: Iterable[str] = ()) -> QueryAnalysis:
    ranges, months = parse_time(text)
    return QueryAnalysis(
        text=text,
        persons=find_persons(text, speakers),
        time_ranges=ranges,
        months=months,
        asks_time=bool(_ASKS_TIME.search(text)),
    )


def has_time_expression(text: str) -> bool:
    return TIME_EXPRESSION.search(text) is not None


__all__ = [
    "QueryAnalysis", "TIME_EXPRESSION", "TimeRange", "analyze_query", "find_persons",
    "has_time_expression", "parse_time",
]
