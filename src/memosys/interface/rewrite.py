"""Text rewriting for MemReader: sentences and clauses, first person -> the speaker's name,
and relative times -> absolute dates, so a memory reads correctly out of its conversation
("I went there yesterday", said by Alice on 8 May 2023 -> "Alice went there on 7 May 2023").

Deterministic and LLM-free; both extractors (rules and LLM) run their output through here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from memosys.operation.timeparse import TimeMention, describe, find_time_mentions

_ABBREVIATIONS = re.compile(r"\b(Mr|Mrs|Ms|Dr|Prof|St|vs|etc|e\.g|i\.e)\.$", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """Split into sentences, keeping the final punctuation (a '?' marks a question)."""
    parts: list[str] = []
    buf = ""
    for piece in re.split(r"(?<=[.!?])\s+|\n+", text.strip()):
        if not piece.strip():
            continue
        buf = f"{buf} {piece}".strip() if buf else piece.strip()
        if _ABBREVIATIONS.search(buf):
            continue  # "Dr." does not end a sentence
        parts.append(buf)
        buf = ""
    if buf:
        parts.append(buf)
    return parts


_SUBJECT = r"(?:i|i'm|i've|i'd|i'll|we|we're|we've|my|he|she|they|it|it's|that|this|there)"
_CLAUSE_SPLIT = re.compile(
    rf"(?:,\s*|\s*;\s*|\s+)(?:and|but|so|because|although|though|while)\s+(?={_SUBJECT}\b)"
    rf"|\s*;\s*|,\s+(?={_SUBJECT}\b)",
    re.IGNORECASE,
)


_COMPOUND_SUBJECT = re.compile(r"^((?:my\s+)?\w+(?:\s+\w+)?)\s+and\s+I\b", re.IGNORECASE)


def clauses(sentence: str) -> list[str]:
    """Split a sentence where a new subject starts ("I'm a mom and I love painting")."""
    body = sentence.strip().rstrip(".!?").strip()
    # "My kids and I went camping" is one clause: protect the compound subject
    body = _COMPOUND_SUBJECT.sub(lambda m: f"{m.group(1)} and\x00I", body)
    return [c.strip(" ,").replace("\x00", " ") for c in _CLAUSE_SPLIT.split(body)
            if c and c.strip(" ,")]


# --- first person -> speaker ---------------------------------------------------------------
_MODALS = {"can", "can't", "cannot", "could", "couldn't", "will", "won't", "would", "wouldn't",
           "should", "shouldn't", "might", "must", "may", "shall", "need", "used"}
_ADVERBS = {"also", "really", "just", "now", "still", "often", "always", "never", "usually",
            "sometimes", "totally", "actually", "finally", "recently", "already", "even",
            "only", "mostly", "rarely", "seldom", "honestly", "definitely", "kinda", "truly",
            "absolutely", "generally", "normally", "currently", "personally", "especially"}
_IRREGULAR_PAST = {
    "went", "saw", "met", "took", "got", "had", "did", "made", "ate", "ran", "bought", "came",
    "began", "felt", "found", "gave", "kept", "knew", "left", "lost", "paid", "put", "read",
    "said", "sat", "sold", "sent", "spent", "stood", "taught", "thought", "told", "understood",
    "won", "wrote", "drove", "flew", "swam", "sang", "spoke", "broke", "chose", "fell", "forgot",
    "grew", "heard", "held", "hurt", "led", "lent", "meant", "quit", "rode", "rose", "shot",
    "slept", "stole", "threw", "woke", "wore", "brought", "caught", "fought", "built", "drew",
    "drank", "became", "was", "were", "dug", "fed", "hid", "hung", "lit", "split", "spread",
    "struck", "swore", "tore", "wept", "bent", "sank", "shook", "sought", "bit", "blew",
}
_PRESENT_IRREGULAR = {"have": "has", "do": "does", "go": "goes", "am": "is", "be": "is",
                      "don't": "doesn't", "haven't": "hasn't", "'m": "is"}
_NOT_VERBS = {"a", "an", "the", "and", "or", "but", "so", "to", "of", "in", "on", "at", "for",
              "with", "myself", "me", "my", "that", "this", "it", "not", "too", "as"}


_NOT_PAST = {"need", "feed", "seed", "speed", "bleed", "breed", "proceed", "exceed", "succeed",
             "indeed", "hundred", "sacred", "naked", "wicked", "bed", "red", "shed", "weed",
             "embed", "deed", "greed", "kindred", "rugged", "beloved", "aged", "learned"}


def is_past(word: str) -> bool:
    w = word.lower()
    return w in _IRREGULAR_PAST or (len(w) > 3 and w.endswith("ed") and w not in _NOT_PAST)


def third_person(verb: str) -> str:
    """'love' -> 'loves', 'go' -> 'goes', 'try' -> 'tries'; past forms and modals unchanged."""
    w = verb.lower()
    if w in _PRESENT_IRREGULAR:
        return _match_case(_PRESENT_IRREGULAR[w], verb)
    if w in _MODALS or is_past(w) or w in _NOT_VERBS or not w.isalpha() or w.endswith("ing"):
        return verb
    if re.search(r"(s|sh|ch|x|z|o)$", w):
        return verb + "es"
    if re.search(r"[^aeiou]y$", w):
        return verb[:-1] + "ies"
    return verb + "s"


def _match_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


_CONTRACTIONS = [
    (re.compile(r"\bI['’]m\b|\bI am\b", re.IGNORECASE), "{S} is"),
    (re.compile(r"\bI['’]ve\b", re.IGNORECASE), "{S} has"),
    (re.compile(r"\bI['’]d\b", re.IGNORECASE), "{S} would"),
    (re.compile(r"\bI['’]ll\b", re.IGNORECASE), "{S} will"),
    (re.compile(r"\bI was\b", re.IGNORECASE), "{S} was"),
    (re.compile(r"\bwe['’]re\b|\bwe are\b", re.IGNORECASE), "{S} and others are"),
    (re.compile(r"\bwe['’]ve\b", re.IGNORECASE), "{S} and others have"),
    (re.compile(r"\bwe['’]ll\b", re.IGNORECASE), "{S} and others will"),
]
_I_VERB = re.compile(r"\bI((?:\s+(?:" + "|".join(sorted(_ADVERBS)) + r"))*)\s+([A-Za-z']+)",
                     re.IGNORECASE)


def to_third_person(text: str, speaker: str | None) -> str:
    """Rewrite first-person references as the speaker ("my" -> "Alice's")."""
    if not speaker:
        return text
    s = speaker
    out = text
    for pattern, repl in _CONTRACTIONS:
        out = pattern.sub(repl.replace("{S}", s), out)
    out = re.sub(r"\bmy kids and I\b", f"{s} and {s}'s kids", out, flags=re.IGNORECASE)
    out = re.sub(r"\b(\w+) and I\b", rf"\1 and {s}", out)

    def _verb(m: re.Match[str]) -> str:
        if m.group(0)[0] != "I" or (m.start() > 0 and out[m.start() - 1] == "'"):
            return m.group(0)
        return f"{s}{m.group(1)} {third_person(m.group(2))}"

    out = _I_VERB.sub(_verb, out)
    out = re.sub(r"\bI\b", s, out)
    out = re.sub(r"\s+myself\b(?=\s*[.!?,]?\s*$)", "", out, flags=re.IGNORECASE)
    out = re.sub(r"\bmyself\b", s, out, flags=re.IGNORECASE)
    out = re.sub(r"\b(?:my|mine)\b", f"{s}'s", out, flags=re.IGNORECASE)
    out = re.sub(r"\bme\b", s, out, flags=re.IGNORECASE)
    out = re.sub(r"\bwe\b", f"{s} and others", out, flags=re.IGNORECASE)
    out = re.sub(r"\bus\b", f"{s} and others", out, flags=re.IGNORECASE)
    out = re.sub(r"\bour\b", f"{s}'s", out, flags=re.IGNORECASE)
    return out[:1].upper() + out[1:] if out else out


FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|i'd|i'll|me|my|mine|myself|we|we're|us|our)\b",
                          re.IGNORECASE)


# --- relative time -> absolute -------------------------------------------------------------
_EXTRA_TIME = [  # expressions timeparse leaves alone that conversations use a lot
    (re.compile(r"\blast night\b", re.IGNORECASE), -1),
    (re.compile(r"\bthis past weekend\b", re.IGNORECASE), None),
]
_HABITUAL = re.compile(r"\b(?:every|each)\s+(?:other\s+)?\w+(?:\s+(?:morning|afternoon|"
                       r"evening|night))?\b|\b(?:on\s+)?(?:mon|tues|wednes|thurs|fri|satur|"
                       r"sun)days\b", re.IGNORECASE)
_PREPOSITIONS = ("in ", "since ", "during ", "of ", "on ", "by ", "until ", "before ", "after ")
_ABSOLUTE_KINDS = re.compile(r"\d{4}")


@dataclass(frozen=True)
class ResolvedTime:
    start: datetime
    end: datetime
    granularity: str
    mention: str
    absolute: str
    """The phrase the mention becomes: 'on 7 May 2023', 'in June 2023', 'since 2019'."""


def _phrase(mention: TimeMention) -> str:
    said = mention.text.lower()
    when = describe(mention)
    if _HOLIDAY.fullmatch(said):
        return f"{mention.text} ({when})"
    if "weekend" in said:
        return f"on the weekend of {when}"
    for prep in _PREPOSITIONS:
        if said.startswith(prep) and prep.strip() != "on":
            return f"{prep}{when}"
    if mention.granularity == "day":
        return f"on {when}"
    return f"in {when}"


_HOLIDAYS = {"new year's eve": (12, 31), "new year's day": (1, 1), "christmas eve": (12, 24),
             "christmas day": (12, 25), "christmas": (12, 25), "halloween": (10, 31),
             "valentine's day": (2, 14)}
_HOLIDAY = re.compile(r"\b(?:" + "|".join(sorted(_HOLIDAYS, key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)
FUTURE = re.compile(r"\b(?:going to|gonna|will|'ll|plan(?:s|ning)? to|planning|expecting|"
                    r"getting|about to|upcoming|scheduled|hope to|want to|can't wait)\b",
                    re.IGNORECASE)
_MONTH_WORD = re.compile(r"^(?:in )?(?:january|february|march|april|may|june|july|august|"
                         r"september|october|november|december)$", re.IGNORECASE)
_WEEKDAY_WORD = re.compile(r"^(?:on )?(?:monday|tuesday|wednesday|thursday|friday|saturday|"
                           r"sunday)$", re.IGNORECASE)


def _forward(m: TimeMention, anchor: datetime) -> TimeMention:
    """In a clause about the future, a bare month or weekday is the next one, not the last."""
    if m.start >= anchor:
        return m
    if _MONTH_WORD.match(m.text.strip()):
        start = m.start.replace(year=m.start.year + 1)
        end = m.end.replace(year=m.end.year + 1)
        return TimeMention(m.text, start, end, m.granularity, m.span)
    if _WEEKDAY_WORD.match(m.text.strip()):
        return TimeMention(m.text, m.start + timedelta(days=7), m.end + timedelta(days=7),
                           m.granularity, m.span)
    return m


def time_mentions(text: str, anchor: datetime) -> list[TimeMention]:
    found = [m for m in find_time_mentions(text, anchor)]
    if FUTURE.search(text):
        found = [_forward(m, anchor) for m in found]
    taken = [m.span for m in found]
    day = anchor.replace(hour=0, minute=0, second=0, microsecond=0)
    for pattern, offset in _EXTRA_TIME:
        for m in pattern.finditer(text):
            if offset is None or any(m.start() < e and s < m.end() for s, e in taken):
                continue
            start = day + timedelta(days=offset)
            found.append(TimeMention(m.group(0), start, start + timedelta(days=1), "day",
                                     m.span()))
    for m in _HOLIDAY.finditer(text):
        if any(m.start() < e and s < m.end() for s, e in taken):
            continue
        month, dom = _HOLIDAYS[m.group(0).lower()]
        start = day.replace(month=month, day=dom)
        if start > day and not FUTURE.search(text):
            start = start.replace(year=start.year - 1)  # the most recent one
        elif start < day and FUTURE.search(text):
            start = start.replace(year=start.year + 1)
        found.append(TimeMention(m.group(0), start, start + timedelta(days=1), "day",
                                 m.span()))
    # a habitual "every Tuesday" is not a date
    habitual = [h.span() for h in _HABITUAL.finditer(text)]
    found = [m for m in found
             if not any(s <= m.span[0] < e or m.span[0] <= s < m.span[1] for s, e in habitual)]
    return sorted(found, key=lambda m: m.span)


def absolutize(text: str, anchor: datetime | None) -> tuple[str, ResolvedTime | None]:
    """Replace relative time mentions by absolute ones; return the first resolved time.

    A mention at the start of the clause ("Yesterday I ran ...") moves to the end
    ("... on 11 June 2023"). Already absolute mentions ("in May 2023") stay as written."""
    if anchor is None:
        return text, None
    anchor = anchor if anchor.tzinfo else anchor.replace(tzinfo=UTC)
    mentions = time_mentions(text, anchor)
    if not mentions:
        return text, None
    first = mentions[0]
    resolved = ResolvedTime(first.start, first.end, first.granularity, first.text,
                            _phrase(first))
    out = text
    moved: list[str] = []
    for m in reversed(mentions):
        start, end = m.span
        if _ABSOLUTE_KINDS.search(m.text):
            continue  # "in 2019", "May 2023": already absolute
        phrase = _phrase(m)
        if start == 0 or not out[:start].strip(" ,"):
            out = out[end:].lstrip(" ,")
            moved.insert(0, phrase)
        else:
            prefix = out[:start]
            if phrase.split(" ", 1)[0] in ("on", "in") and re.search(r"\b(?:on|in)\s*$", prefix):
                prefix = re.sub(r"\b(?:on|in)\s*$", "", prefix)
            out = prefix + phrase + out[end:]
    if moved:
        body = out.rstrip(" .!")
        tail = out[len(body):]
        out = f"{body} {' '.join(moved)}{tail}"
    out = re.sub(r"\s{2,}", " ", out).strip()
    return out[:1].upper() + out[1:], resolved


def human_date(value: datetime) -> str:
    return f"{value.day} {value:%B %Y}"
