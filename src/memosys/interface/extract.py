"""Extraction: turns (chat messages or document chunks) -> candidate memories.

Every extractor implements :class:`Extractor` (``extract(turns) -> Extraction``). Two are
built in: :class:`RuleExtractor` here (LLM-free, fast, deterministic) and
:class:`memosys.interface.llm_extract.LLMExtractor`. Both resolve times with
:mod:`memosys.operation.timeparse` and write memories in the third person with absolute
dates (:mod:`memosys.interface.rewrite`), so their output is comparable.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from memosys.interface.rewrite import (
    FIRST_PERSON,
    absolutize,
    clauses,
    human_date,
    is_past,
    sentences,
    time_mentions,
    to_third_person,
)
from memosys.operation.context import content_words
from memosys.types import MemoryType

DERIVED_TYPES = (MemoryType.FACT, MemoryType.PREFERENCE, MemoryType.EVENT, MemoryType.RULE,
                 MemoryType.PERSONA)
MAX_CANDIDATE_CHARS = 1000


@dataclass(frozen=True)
class Turn:
    """One unit of raw input: a chat message or a document chunk (usually a stored episode)."""

    text: str
    """The content, without a "Speaker: " prefix."""
    speaker: str | None = None
    role: str = "user"
    timestamp: datetime | None = None
    episode_id: str | None = None
    session: str | None = None
    document_uri: str | None = None

    @property
    def is_document(self) -> bool:
        return self.document_uri is not None and self.role != "user"


@dataclass
class Candidate:
    """A memory an extractor proposes; reconciliation decides what happens to it."""

    memory_type: MemoryType
    text: str
    about: str | None
    valid_from: datetime | None
    derived_from: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    time_text: str | None = None
    """The time expression it was resolved from ("yesterday"), if any."""
    extractor: str = "rules"
    turn: Turn | None = None


@dataclass
class Extraction:
    candidates: list[Candidate] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Per-turn problems (unusable model output, ...); the turns themselves are kept."""
    calls: int = 0
    """Model calls made."""


class Extractor(Protocol):
    name: str

    def extract(self, turns: Sequence[Turn]) -> Extraction:
        """Candidates for `turns`. An extractor may also take `context=` (earlier turns,
        shown but not extracted)."""
        ...


# --- topic tags ----------------------------------------------------------------------------
_TOPICS = {
    "food": "food eat eats ate cook cooking restaurant pizza cilantro vegetarian vegan spicy "
            "dinner lunch breakfast dish dishes peanuts menu chef sushi meat pineapple",
    "drink": "tea coffee wine beer juice drink drinks",
    "pets": "dog dogs cat cats puppy beagle pet pets kitten",
    "work": "work works job engineer developer manager office meeting meetings career "
            "company bank nurse teacher",
    "family": "mom dad mother father sister brother son daughter kids children wife husband "
              "grandmother grandfather family",
    "travel": "trip travel flight hotel vacation holiday visit visited moved",
    "health": "allergic allergy doctor hospital sick smoke smoking therapy health",
    "sport": "marathon running run ran swimming swim gym hiking yoga football soccer tennis",
    "music": "music band guitar piano song songs concert sing",
    "movies": "movie movies film films sci-fi horror",
    "books": "book books reading read novel",
    "hobby": "painting pottery camping hobby drawing knitting gardening",
}
_TOPIC_OF = {w: topic for topic, words in _TOPICS.items() for w in words.split()}


def topic_tags(text: str) -> list[str]:
    words = re.findall(r"[a-z][a-z\-]+", text.lower())
    return sorted({_TOPIC_OF[w] for w in words if w in _TOPIC_OF})


# --- rule-based typing ---------------------------------------------------------------------
_SMALL_TALK = re.compile(
    r"^(?:hi|hello|hey|hiya|yo|good (?:morning|afternoon|evening|night)|bye|goodbye|"
    r"see (?:you|ya)|ciao|cheers|thanks|thank you|thx|lol|haha+|hah|ok|okay|sure|yeah|yes|"
    r"yep|no|nope|no way|wow|congrats|congratulations|awesome|cool|nice|great|sounds \w+|"
    r"oh|ah|hmm|well|omg|take care|good luck|have fun|noted|right|exactly|totally|indeed)\b"
    r"[\s,!.]*",
    re.IGNORECASE,
)
_PRONOUN_SUBJECT = re.compile(r"^(?:it|it's|that|that's|this|these|those|he|he's|she|she's|"
                              r"they|they're|there|there's|what|which|who|you|you're|your)\b",
                              re.IGNORECASE)
_HEDGE = re.compile(r"^(?:i think|i guess|i believe|i feel like|i suppose|i hope|maybe|"
                    r"actually|honestly|basically|so|well|also|anyway|btw|and|but)\b[\s,]*",
                    re.IGNORECASE)
_RULE_LEAD = re.compile(r"^(?:please\s+|from now on[\s,]+|going forward[\s,]+|in future[\s,]+)+",
                        re.IGNORECASE)
_IMPERATIVE = re.compile(
    r"^(?:always|never|don't|do not|dont|stop|avoid|call|remind|keep|use|answer|reply|"
    r"respond|write|talk|speak|send|schedule|book|include|tell|address|refer|show|give|"
    r"make sure|remember to|check|format|list|summari[sz]e|be|ask|notify|let)\b",
    re.IGNORECASE,
)
_RULE_CUE = re.compile(r"\b(?:me|my|you|your|yours|answers?|replies|responses?)\b|"
                       r"^(?:always|never)\b|from now on", re.IGNORECASE)
_NOT_RULES = re.compile(r"^(?:don't worry|do not worry|never mind|let me|let's|call it|"
                        r"keep (?:it up|going|in touch)|tell me (?:about|more))",
                        re.IGNORECASE)
_PREFERENCE = re.compile(
    r"\bI(?:\s+\w+ly|\s+(?:also|really|just|now|still|totally|absolutely|kinda|truly|"
    r"especially|do|don't|do not|never|always))*\s+(?:love|like|prefer|hate|enjoy|adore|"
    r"dislike|detest|loathe|fancy|can't stand|cannot stand|can't get enough of|"
    r"would rather|'d rather|am into|'m into|am a (?:big )?fan of|'m a (?:big )?fan of)\b|"
    r"\b(?:my|our) (?:favou?rite|fave|least favou?rite)\b|"
    r"\bI(?:'m| am) (?:really |totally |so |also |more of )?(?:into|a fan of|obsessed with|"
    r"(?:a |an )?(?:vegetarian|vegan|pescatarian|teetotal(?:er)?|[\w\- ]{1,30} person))\b|"
    r"\bI(?:'ve| have) been (?:a |an )?(?:vegetarian|vegan|pescatarian)\b|"
    r"\b(?:been|not|never been) (?:a |much of a )?(?:big )?fan of\b|"
    r"^(?:my|our|[A-Z]\w+(?:'s)?)(?: \w+)? (?:really |also |still )?(?:prefers|loves|likes|"
    r"hates|enjoys|adores|dislikes)\b",
    re.IGNORECASE,
)
_PERSONA = re.compile(
    r"\bmy name is\b|\bI(?:'m| am) (?:a|an) (?!fan\b)(?![\w\- ]{1,30} person\b)\w+|"
    r"\bI work (?:as|at|for|in)\b|\bI(?:'m| am) (?:from|based in)\b|\bI live in\b|"
    r"\bI(?:'m| am) \d+(?: years old)?\b|\bcall me\b(?=.*\bname\b)|\bI(?:'m| am) (?:married|"
    r"single|divorced|engaged|retired|pregnant)\b|\bI(?:'m| am) (?:studying|majoring)\b",
    re.IGNORECASE,
)
_PLAN = re.compile(r"\b(?:going to|gonna|will|plan(?:ning)? to|planning|about to|"
                   r"'ll|next)\b", re.IGNORECASE)
_JUST = re.compile(r"\bjust\s+(\w+)", re.IGNORECASE)
_REQUEST = re.compile(r"^(?:i need|i'd like|i would like|i want|i'm looking for|"
                      r"i am looking for|can you|could you|would you|help me|let me know)\b",
                      re.IGNORECASE)
_ASSISTANT_ACTION = re.compile(r"^(?:always|never|don't|do not|dont)\s+(?:\w+\s+)?(?:suggest|"
                               r"recommend|mention|include|use|send|schedule|book|add|show|"
                               r"give|share|post|email|text|message|contact|bring up|order)\b",
                               re.IGNORECASE)
_MIN_CONTENT_WORDS = 2
_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)  # only to detect a time mention when none is given


_AFTER_BE = {"am", "is", "are", "was", "were", "be", "been", "being", "'m", "i'm", "feel", "felt",
             "get", "got", "seem", "seems", "so", "very", "really", "too", "quite", "a", "an",
             "the", "more", "most", "pretty", "super", "totally", "getting", "become"}
_USED_TO = re.compile(r"\bused to\b", re.IGNORECASE)
_NAMED_SUBJECT = re.compile(
    r"^(?:the |a |an |our |their )?(?!(?:Good|Nice|Great|Sounds|Thanks|Thank|Glad|Happy|"
    r"Sorry|Welcome|Hope|Looking)\b)[A-Za-z][\w\-]*(?: [A-Z]\w+)?(?: [a-z]+)?\s+"
    r"(?:is|are|was|were|has|have|had|will|would|can|could|lives|works|\w+s|\w+ed)\b"
)


def has_past_tense(text: str) -> bool:
    """A past-tense verb that is not an adjective after "be" ("I'm tired", "so excited")."""
    tokens = re.findall(r"[A-Za-z']+", text)
    for i, tok in enumerate(tokens):
        if is_past(tok) and (i == 0 or tokens[i - 1].lower() not in _AFTER_BE):
            return True
    return False


def classify(clause: str, role: str = "user", *, has_time: bool = False) -> MemoryType | None:
    """The memory type of one clause, or None when it holds nothing worth keeping.

    `has_time`: the clause mentions a (non-habitual) time, which makes it an event unless
    it is a preference, rule or persona."""
    text = clause.strip()
    if not text or text.endswith("?") or _NOT_RULES.match(text):
        return None
    lead = _RULE_LEAD.sub("", text)
    if _IMPERATIVE.match(lead) and (
        (role == "user" and (_RULE_CUE.search(text) or _ASSISTANT_ACTION.match(lead)))
        or role == "document"
    ):
        return MemoryType.RULE
    if _REQUEST.match(text):
        return None  # a request to the assistant, not something to remember
    first_person = FIRST_PERSON.search(text) is not None
    if _PRONOUN_SUBJECT.match(text) and not first_person:
        return None  # "it was so powerful": meaningless out of context
    if len(content_words(text)) + first_person < _MIN_CONTENT_WORDS:
        return None
    if _PREFERENCE.search(text):
        return MemoryType.PREFERENCE
    if _PERSONA.search(text):
        return MemoryType.PERSONA
    if _USED_TO.search(text):
        return MemoryType.FACT  # a past habit, not a dated happening
    if has_time or has_past_tense(text) or _JUST.search(text):
        return MemoryType.EVENT
    if not first_person and not _NAMED_SUBJECT.match(text):
        return None  # subject-less fragment ("sounds good", "good to see you")
    return MemoryType.FACT


def _strip_small_talk(sentence: str) -> str:
    prev = None
    out = sentence
    while prev != out:
        prev = out
        out = _SMALL_TALK.sub("", out, count=1).strip()
    return out


class RuleExtractor:
    """LLM-free extraction: clause splitting, first person -> speaker, pattern typing.

    Preferences ("I love/like/prefer/hate/enjoy ..."), rules ("always/never/please don't/
    from now on ..." addressed to the assistant), persona ("I am a .../my name is/I work
    as ..."), events (a past-tense happening or one anchored in time), else facts.
    Greetings, questions and small talk yield nothing; assistant turns are skipped."""

    name = "rules"

    def __init__(self, *, include_assistant: bool = False, max_per_turn: int = 20) -> None:
        self.include_assistant = include_assistant
        self.max_per_turn = max_per_turn

    def extract(self, turns: Sequence[Turn], context: Sequence[Turn] = ()) -> Extraction:
        out = Extraction()
        for turn in turns:
            out.candidates.extend(self.extract_turn(turn))
        return out

    def extract_turn(self, turn: Turn) -> list[Candidate]:
        if turn.role == "assistant" and not self.include_assistant:
            return []
        found: list[Candidate] = []
        for sentence in sentences(turn.text):
            if sentence.rstrip().endswith("?"):
                continue
            body = _strip_small_talk(sentence)
            for clause in clauses(body):
                clause = _HEDGE.sub("", clause).strip()
                has_time = bool(time_mentions(clause, turn.timestamp or _ANCHOR))
                kind = classify(clause, turn.role, has_time=has_time)
                if kind is None:
                    continue
                cand = make_candidate(turn, clause, kind, self.name)
                if cand is not None and not _duplicate(cand, found):
                    found.append(cand)
                if len(found) >= self.max_per_turn:
                    return found
        return found


def make_candidate(
    turn: Turn, clause: str, kind: MemoryType, extractor: str, *, time_text: str | None = None
) -> Candidate | None:
    """Rewrite a clause into a standalone memory (absolute time, third person)."""
    clause = clause.strip().strip("\"'").strip()
    if not clause:
        return None
    text, when = absolutize(clause, turn.timestamp)
    if when is None and time_text and turn.timestamp is not None:
        _, when = absolutize(time_text, turn.timestamp)
        if when is not None:
            text = f"{text.rstrip(' .')} {when.absolute}"
    if when is None and kind == MemoryType.EVENT and _PLAN.search(clause):
        pass  # a plan without a date: keep the message time as its event time
    text = to_third_person(text, turn.speaker)
    if kind == MemoryType.RULE and turn.speaker:
        text = f"{turn.speaker}'s rule: {_RULE_LEAD.sub('', text).strip()}"
    elif turn.speaker and turn.speaker.lower() not in text.lower() and kind in (
        MemoryType.PREFERENCE, MemoryType.PERSONA
    ):
        text = f"{turn.speaker}: {text}"
    if kind == MemoryType.EVENT and when is None and turn.timestamp is not None:
        text = f"{text.rstrip(' .')} (mentioned on {human_date(turn.timestamp)})"
    text = text.strip()
    if not text or len(text) > MAX_CANDIDATE_CHARS:
        return None
    if not text.endswith((".", "!", ")")):
        text += "."
    return Candidate(
        memory_type=kind,
        text=text,
        about=turn.speaker,
        valid_from=when.start if when else turn.timestamp,
        derived_from=[turn.episode_id] if turn.episode_id else [],
        tags=topic_tags(text),
        time_text=when.mention if when else None,
        extractor=extractor,
        turn=turn,
    )


def _duplicate(cand: Candidate, others: list[Candidate]) -> bool:
    words = set(content_words(cand.text))
    for other in others:
        theirs = set(content_words(other.text))
        if words and theirs and len(words & theirs) / len(words | theirs) >= 0.8:
            return True
    return False


class CombinedExtractor:
    """Rules plus a (capable) LLM: the union, dropping LLM candidates the rules already
    found. Errors of the LLM never cost the rule-based candidates."""

    name = "auto"

    def __init__(self, rules: Extractor, llm: Extractor) -> None:
        self.rules = rules
        self.llm_extractor = llm
        self.backend = f"rules+{getattr(llm, 'backend', llm.name)}"

    def extract(self, turns: Sequence[Turn], context: Sequence[Turn] = ()) -> Extraction:
        base = run_extractor(self.rules, turns, context)
        extra = run_extractor(self.llm_extractor, turns, context)
        out = Extraction(list(base.candidates), base.errors + extra.errors,
                         base.calls + extra.calls)
        for cand in extra.candidates:
            if not _duplicate(cand, out.candidates):
                out.candidates.append(cand)
        return out


def run_extractor(extractor: Extractor, turns: Turn | Sequence[Turn],
             context: Sequence[Turn]) -> Extraction:
    """Run an extractor; `context` (earlier turns, shown but not extracted) goes to those
    that take it."""
    batch = [turns] if isinstance(turns, Turn) else list(turns)
    if "context" in inspect.signature(extractor.extract).parameters:
        return extractor.extract(batch, context=context)  # type: ignore[call-arg]
    return extractor.extract(batch)


__all__ = [
    "DERIVED_TYPES",
    "Candidate",
    "CombinedExtractor",
    "Extraction",
    "Extractor",
    "RuleExtractor",
    "Turn",
    "classify",
    "make_candidate",
    "run_extractor",
    "topic_tags",
]
