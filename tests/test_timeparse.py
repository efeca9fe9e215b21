"""Relative and absolute time expressions resolve against the session date."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memosys.operation.timeparse import describe, find_time_mentions

MON_8_MAY_2023 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def _one(text: str) -> tuple[str, str]:
    [mention] = find_time_mentions(text, MON_8_MAY_2023)
    return describe(mention), mention.granularity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I went to the support group yesterday.", ("7 May 2023", "day")),
        ("I'll call her tomorrow", ("9 May 2023", "day")),
        ("We met today", ("8 May 2023", "day")),
        ("the day before yesterday was rough", ("6 May 2023", "day")),
        ("I painted it two days ago", ("6 May 2023", "day")),
        ("I started 3 weeks ago", ("the week of 17 April 2023", "week")),
        ("we moved a few years ago", ("2020", "year")),
        ("last week I ran a 5k", ("the week of 1 May 2023", "week")),
        ("next month we fly", ("June 2023", "month")),
        ("last year was great", ("2022", "year")),
        ("Last Friday I went camping", ("5 May 2023", "day")),
        ("On Saturday we baked", ("6 May 2023", "day")),
        ("next Tuesday is the exam", ("9 May 2023", "day")),
        ("last weekend we hiked", ("6 May 2023", "day")),
        ("It happened on 25 May, 2022.", ("25 May 2022", "day")),
        ("It happened on March 3rd, 2021.", ("3 March 2021", "day")),
        ("back in 2019 I lived abroad", ("2019", "year")),
        ("in August we went to the lake", ("August 2022", "month")),
        ("in February I started pottery", ("February 2023", "month")),
        ("the date was 2023-01-15", ("15 January 2023", "day")),
        ("June 2021 was the wedding", ("June 2021", "month")),
    ],
)
def test_resolves(text: str, expected: tuple[str, str]) -> None:
    assert _one(text) == expected


def test_no_false_mentions() -> None:
    for text in ("You may want to try it", "I like to march in parades", "A day to remember",
                 "They sell weekly passes", "I have 2 dogs"):
        assert find_time_mentions(text, MON_8_MAY_2023) == [], text


def test_several_mentions_in_order_with_spans() -> None:
    text = "Yesterday I booked a trip for next month, after last week's mess"
    mentions = find_time_mentions(text, MON_8_MAY_2023)
    assert [m.text for m in mentions] == ["Yesterday", "next month", "last week"]
    assert all(text[m.span[0]:m.span[1]] == m.text for m in mentions)
    assert mentions[0].start == datetime(2023, 5, 7, tzinfo=UTC)
    assert mentions[0].end == datetime(2023, 5, 8, tzinfo=UTC)


def test_naive_anchor_is_utc_and_month_arithmetic_wraps() -> None:
    [m] = find_time_mentions("two months ago", datetime(2023, 1, 31))
    assert describe(m) == "November 2022"
    [m] = find_time_mentions("next month", datetime(2023, 12, 5))
    assert describe(m) == "January 2024"


def test_absolute_times_need_no_anchor() -> None:
    """The grammar retrieval reads questions with: only expressions that name their own
    calendar time, and year-less months apart."""
    from memosys.operation.timeparse import find_absolute_times

    mentions, months = find_absolute_times(
        "Did she go on the 8th of May 2023, on December 1,2023 or last week?")
    assert [(m.start, m.end) for m in mentions] == [
        (datetime(2023, 5, 8, tzinfo=UTC), datetime(2023, 5, 9, tzinfo=UTC)),
        (datetime(2023, 12, 1, tzinfo=UTC), datetime(2023, 12, 2, tzinfo=UTC)),
    ] and months == []
    assert find_absolute_times("What did they give him on Aug 15th?") == ([], [8])
    assert find_absolute_times("in summer 2021")[0][0].start == datetime(2021, 6, 1, tzinfo=UTC)
    assert find_absolute_times("You may march on") == ([], [])
