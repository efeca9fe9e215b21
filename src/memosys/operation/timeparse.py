"""Resolve time expressions in text against an anchor date ("yesterday" said on 8 May 2023
is 7 May 2023). Deterministic rules, so event times do not depend on a model's arithmetic.

Each mention resolves to an interval [start, end) with a granularity, because "last
week" is a week, not a day. Bare weekdays ("on Friday") mean the most recent one before the
anchor: conversations mostly recount; "next Friday" looks forward.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

Granularity = Literal["day", "week", "month", "year"]

_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "a couple of": 2, "a few": 3, "several": 3,
}
_MONTHS = {
    name: i + 1
    for i, names in enumerate(
        [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
         ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
         ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
         ("december", "dec")]
    )
    for name in names
}
_WEEKDAYS = {d: i for i, d in enumerate(
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"])}

_NUM = r"(?P<num>\d+|a couple of|a few|several|an?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"  # noqa: E501
_UNIT = r"(?P<unit>day|week|month|year)s?"
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_WEEKDAY = r"(?P<weekday>" + "|".join(_WEEKDAYS) + r")"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"


@dataclass(frozen=True)
class TimeMention:
    text: str
    start: datetime
    end: datetime
    granularity: Granularity
    span: tuple[int, int]


def _day(value: datetime) -> datetime:
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _month_start(year: int, month: int) -> datetime:
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=UTC)


def _interval(anchor: datetime, unit: str, offset: int) -> tuple[datetime, datetime]:
    """The calendar unit containing the anchor, shifted by `offset` units."""
    day = _day(anchor)
    if unit == "day":
        start = day + timedelta(days=offset)
        return start, start + timedelta(days=1)
    if unit == "week":
        start = day - timedelta(days=day.weekday()) + timedelta(weeks=offset)
        return start, start + timedelta(weeks=1)
    if unit == "month":
        return (_month_start(day.year, day.month + offset),
                _month_start(day.year, day.month + offset + 1))
    return datetime(day.year + offset, 1, 1, tzinfo=UTC), datetime(
        day.year + offset + 1, 1, 1, tzinfo=UTC)


def _ago(anchor: datetime, n: int, unit: str, sign: int) -> tuple[datetime, datetime]:
    day = _day(anchor)
    if unit == "day":
        start = day + timedelta(days=sign * n)
    elif unit == "week":
        start = day + timedelta(weeks=sign * n)
    elif unit == "month":
        month = _month_start(day.year, day.month + sign * n)
        start = month.replace(day=min(day.day, _days_in_month(month)))
    else:
        start = day.replace(year=day.year + sign * n, day=min(day.day, 28)
                            if day.month == 2 else day.day)
    # "three weeks ago" is approximate: report the unit it lands in, not a single day
    if unit == "day":
        return start, start + timedelta(days=1)
    return _interval(start, unit, 0)


def _days_in_month(month_start: datetime) -> int:
    nxt = _month_start(month_start.year, month_start.month + 1)
    return (nxt - month_start).days


def _weekday(anchor: datetime, weekday: int, which: str) -> datetime:
    day = _day(anchor)
    if which == "next":
        delta = (weekday - day.weekday()) % 7 or 7
        return day + timedelta(days=delta)
    if which == "this":
        return day - timedelta(days=day.weekday()) + timedelta(days=weekday)
    delta = (day.weekday() - weekday) % 7 or 7  # "last"/bare: strictly before the anchor
    return day - timedelta(days=delta)


_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?P<word>the day before yesterday|the day after tomorrow|yesterday|"
                r"tomorrow|today|tonight|this (?:morning|afternoon|evening))\b"), "word"),
    (re.compile(rf"\b{_NUM} {_UNIT} (?P<dir>ago|later|from now)\b"), "ago"),
    (re.compile(r"\b(?P<which>last|this|next) weekend\b"), "weekend"),
    (re.compile(rf"\b(?P<which>last|this|next|past) {_UNIT}\b"), "relative"),
    (re.compile(rf"\b(?:(?P<which>last|this|next|on|past) )?{_WEEKDAY}\b"), "weekday"),
    (re.compile(rf"\b{_DAY} (?:of )?{_MONTH},? ?{_YEAR}\b"), "dmy"),
    (re.compile(rf"\b{_MONTH} {_DAY},? ?{_YEAR}\b"), "mdy"),
    (re.compile(r"\b(?P<iso>(?:19|20)\d\d-[01]\d-[0-3]\d)\b"), "iso"),
    (re.compile(rf"\b{_MONTH},? {_YEAR}\b"), "month_year"),
    (re.compile(rf"\b(?:(?P<which>last|this|next|in) )?{_MONTH}\b(?! \d)"), "month"),
    (re.compile(rf"\b(?:in|since|during|of) {_YEAR}\b"), "year"),
]


def find_time_mentions(text: str, anchor: datetime) -> list[TimeMention]:
    """Every time expression in `text`, resolved against `anchor` (earliest first)."""
    anchor = anchor if anchor.tzinfo else anchor.replace(tzinfo=UTC)
    lowered = text.lower()
    taken: list[tuple[int, int]] = []
    found: list[TimeMention] = []
    for pattern, kind in _RULES:
        for match in pattern.finditer(lowered):
            span = match.span()
            if any(span[0] < end and start < span[1] for start, end in taken):
                continue
            if kind == "month" and match.group("which") is None and not text[span[0]].isupper():
                continue  # a lower-case bare "march" or "may" is a verb, not a month
            resolved = _resolve(kind, match, anchor)
            if resolved is None:
                continue
            start, end, granularity = resolved
            taken.append(span)
            found.append(TimeMention(text[span[0]:span[1]], start, end, granularity, span))
    return sorted(found, key=lambda m: m.span)


_ABSOLUTE = ("dmy", "mdy", "iso", "month_year", "year")
"""Rules that need no anchor: the expression names its own calendar time."""
_SEASONS = {"spring": (3, 6), "summer": (6, 9), "autumn": (9, 12), "fall": (9, 12),
            "winter": (12, 15)}
_SEASON_YEAR = re.compile(rf"\b(?P<season>{'|'.join(_SEASONS)}) (?:of )?{_YEAR}\b")
_BARE_MONTH = re.compile(
    rf"\b(?:(?P<which>in|during|since|until|by|early|late|mid|mid-) ?)?{_MONTH}\b(?! \d)"
    rf"|\b{_MONTH.replace('month', 'dated')} {_DAY}\b")
"""A month without a year: "in June", a capitalised "July", or a date "Aug 15th"."""


def find_absolute_times(text: str) -> tuple[list[TimeMention], list[int]]:
    """The time expressions of `text` that name a calendar time by themselves ("on 8 May,
    2023", "in December 2023", "in summer 2021", "in 2022"), with no anchor to resolve
    against (a question is asked at some unknown time after the events it asks about);
    and the months named without a year ("in June"), which match that month of any year.
    Relative expressions ("last week") are left out."""
    lowered = text.lower()
    taken: list[tuple[int, int]] = []
    found: list[TimeMention] = []

    def free(span: tuple[int, int]) -> bool:
        return not any(span[0] < end and start < span[1] for start, end in taken)

    anchor = datetime(2000, 1, 1, tzinfo=UTC)  # unused by absolute rules
    for pattern, kind in _RULES:
        if kind not in _ABSOLUTE:
            continue
        for match in pattern.finditer(lowered):
            resolved = _resolve(kind, match, anchor) if free(match.span()) else None
            if resolved is not None:
                taken.append(match.span())
                found.append(TimeMention(text[slice(*match.span())], *resolved, match.span()))
    for match in _SEASON_YEAR.finditer(lowered):
        if free(match.span()):
            first, last = _SEASONS[match["season"]]
            year = int(match["year"])
            taken.append(match.span())
            found.append(TimeMention(text[slice(*match.span())], _month_start(year, first),
                                     _month_start(year, last), "month", match.span()))
    months: list[int] = []
    for match in _BARE_MONTH.finditer(lowered):
        if not free(match.span()):
            continue
        name = match["month"] or match["dated"]
        bare = match["dated"] is None and match["which"] is None  # not "Aug 15th", "in May"
        if bare and (not text[match.start("month")].isupper() or name == "may"):
            continue  # "may", "march": verbs unless capitalised; "May" alone stays a verb
        if bare and len(name) <= 4 and name not in ("june", "july"):
            continue  # "Mar", "Sep" alone are too ambiguous
        taken.append(match.span())
        if _MONTHS[name] not in months:
            months.append(_MONTHS[name])
    return sorted(found, key=lambda m: m.span), months


def _resolve(
    kind: str, m: re.Match[str], anchor: datetime
) -> tuple[datetime, datetime, Granularity] | None:
    g = m.groupdict()
    if kind == "word":
        offset = {"the day before yesterday": -2, "yesterday": -1, "tomorrow": 1,
                  "the day after tomorrow": 2}.get(g["word"], 0)
        return (*_interval(anchor, "day", offset), "day")
    if kind == "ago":
        num = g["num"]
        n = int(num) if num.isdigit() else _NUMBERS[num]
        sign = -1 if g["dir"] == "ago" else 1
        return (*_ago(anchor, n, g["unit"], sign), g["unit"])  # type: ignore[return-value]
    if kind == "relative":
        offset = {"last": -1, "past": -1, "this": 0, "next": 1}[g["which"]]
        return (*_interval(anchor, g["unit"], offset), g["unit"])  # type: ignore[return-value]
    if kind == "weekend":
        offset = {"last": -1, "this": 0, "next": 1}[g["which"]]
        week, _ = _interval(anchor, "week", offset)
        return week + timedelta(days=5), week + timedelta(days=7), "day"
    if kind == "weekday":
        which = g["which"] or "on"
        day = _weekday(anchor, _WEEKDAYS[g["weekday"]], which)
        return day, day + timedelta(days=1), "day"
    if kind in ("dmy", "mdy"):
        try:
            day = datetime(int(g["year"]), _MONTHS[g["month"]], int(g["day"]), tzinfo=UTC)
        except ValueError:
            return None
        return day, day + timedelta(days=1), "day"
    if kind == "iso":
        try:
            day = datetime.fromisoformat(g["iso"]).replace(tzinfo=UTC)
        except ValueError:
            return None
        return day, day + timedelta(days=1), "day"
    if kind == "month_year":
        start = _month_start(int(g["year"]), _MONTHS[g["month"]])
        return start, _month_start(start.year, start.month + 1), "month"
    if kind == "month":
        if g["month"] == "may" and g["which"] is None:
            return None  # the verb "may"
        if g["which"] is None and len(g["month"]) <= 4 and g["month"] not in ("june", "july"):
            return None  # "mar", "sep" etc. alone are too ambiguous
        month = _MONTHS[g["month"]]
        year = anchor.year
        if g["which"] == "last" or (g["which"] in (None, "in") and month > anchor.month):
            year -= 1  # the most recent such month, as conversations recount
        if g["which"] == "next" and month <= anchor.month:
            year += 1
        start = _month_start(year, month)
        return start, _month_start(year, month + 1), "month"
    if kind == "year":
        year = int(g["year"])
        return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC), "year"
    return None


def describe(mention: TimeMention) -> str:
    """A human, absolute form: '7 May 2023', 'the week of 1 May 2023', 'May 2023', '2023'."""
    start = mention.start
    if mention.granularity == "day":
        return f"{start.day} {start:%B %Y}"
    if mention.granularity == "week":
        return f"the week of {start.day} {start:%B %Y}"
    if mention.granularity == "month":
        return f"{start:%B %Y}"
    return f"{start:%Y}"
