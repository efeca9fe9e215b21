"""Training data for parametric memory: questions, answers and replay from memories.

Each memory becomes a few chat examples ``(question, answer)``:

* **Q/A from templates.** A memory shaped like ``"<subject>'s <attribute> is <value>."`` gives
  questions about the attribute ("What is Ana's hometown?"), answered with the memory
  sentence; the value is known, so recall can be scored by containment. Any memory also gives
  statement examples: "What do you know about <subject>?" answered by the memory text, the
  subject being its leading name (capitalised words) or first words.
* **Context distillation** (``method="context"``): the same questions, but the answer is the
  *teacher's* - the base model answering with the memory in its context - so the adapter
  learns to behave, without the text, as the model does with it (sequence-level context
  distillation). This is the activation -> parametric route.
* **System prompts.** A memory's questions alternate between the model's default system
  prompt and ``MemOS.chat``'s, so the adapter answers under both (closed-book ``chat`` and the
  scheduler's chat).
* **Replay**: the base model's own greedy answers to unrelated prompts
  (:data:`REPLAY_PROMPTS`), so the adapter keeps general behaviour. A different, fixed set
  (:data:`UNRELATED_QUESTIONS`) is held out to measure forgetting.

The data hash (sha256 over the examples' exact token ids) goes into the adapter header and
names the training checkpoint, so a resumed run is provably the same training.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "REPLAY_PROMPTS",
    "UNRELATED_QUESTIONS",
    "Example",
    "FactShape",
    "Method",
    "data_hash",
    "decoy_questions",
    "near_miss_subject",
    "parse_fact",
    "probe_question",
    "questions_for",
]

Method = Literal["template", "context"]
METHODS: tuple[str, ...] = ("template", "context")


@dataclass(frozen=True)
class FactShape:
    """What a memory says, as far as templates can tell."""

    subject: str
    attribute: str | None = None
    value: str | None = None
    """Known for ``"<subject>'s <attribute> is <value>"``; probes are then scorable."""


@dataclass(frozen=True)
class Example:
    """One chat training example: the user turn and the assistant answer it should give."""

    question: str
    answer: str
    source_id: str | None
    """The memory it teaches; ``None`` for replay (a decoy names the memory it borders)."""
    kind: Literal["qa", "statement", "replay", "decoy"]
    complete: bool = True
    """Whether the answer is a whole turn (then the end-of-turn token is trained too)."""
    system: str | None = None
    """The system message it is asked under (None: the model's default one)."""


_POSSESSIVE = re.compile(
    r"^(?P<subject>[^.?!]+?)['’]s (?P<attribute>[^.?!]+?) (?:is|are|was|were) "
    r"(?P<value>[^?!]+?)[.!]?$"
)
_LEADING_NAME = re.compile(r"^((?:[A-Z][\w'’\-]*)(?:\s+[A-Z][\w'’\-]*)*)")


def parse_fact(text: str) -> FactShape:
    text = " ".join(text.split())
    m = _POSSESSIVE.match(text)
    if m:
        return FactShape(m["subject"].strip(), m["attribute"].strip(), m["value"].strip())
    name = _LEADING_NAME.match(text)
    subject = name.group(1) if name and name.group(1) not in {"I", "The", "A", "An"} else ""
    if not subject:
        subject = " ".join(text.rstrip(".!?").split()[:4])
    return FactShape(subject)


def questions_for(shape: FactShape) -> list[tuple[str, Literal["qa", "statement"]]]:
    """Training questions for a memory (the probe phrasing is not among them)."""
    out: list[tuple[str, Literal["qa", "statement"]]] = []
    if shape.attribute is not None:
        out.append((f"What is {shape.subject}'s {shape.attribute}?", "qa"))
        out.append((f"Do you know {shape.subject}'s {shape.attribute}?", "qa"))
    out.append((f"What do you know about {shape.subject}?", "statement"))
    return out


# Decoys: questions next to a memory's - its subject's *other* attributes, and near-miss
# subjects (one name part swapped) with its attribute - answered by the base model, so the
# adapter learns where its facts stop instead of answering every "What is <Name>'s <x>?"
# with a memorised value. Generic pools: nothing here is fitted to a particular fact set.
DECOY_ATTRIBUTES: tuple[str, ...] = (
    "favourite colour", "age", "birthday", "job", "nationality", "height", "best friend",
    "phone number", "shoe size", "middle name", "favourite sport", "eye colour",
)
DECOY_FIRST_NAMES: tuple[str, ...] = (
    "John", "Maria", "David", "Anna", "James", "Sofia", "Robert", "Emma", "Carlos", "Laura",
    "Peter", "Nina",
)
DECOY_SURNAMES: tuple[str, ...] = (
    "Smith", "Garcia", "Brown", "Müller", "Johnson", "Rossi", "Wilson", "Martin", "Taylor",
    "Novak", "Lee", "Clark",
)


def _pick(pool: Sequence[str], key: str, avoid: set[str]) -> str:
    start = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    for k in range(len(pool)):
        choice = pool[(start + k) % len(pool)]
        if choice.lower() not in avoid:
            return choice
    return pool[start % len(pool)]


def near_miss_subject(subject: str, k: int = 0) -> str:
    """``subject`` with one name part swapped for a common one (deterministic; ``k`` gives
    other near misses: even swaps the first name, odd the last)."""
    parts = subject.split()
    avoid = {p.lower() for p in parts}
    key = f"{subject}#{k}"
    if len(parts) >= 2 and k % 2:
        return " ".join([*parts[:-1], _pick(DECOY_SURNAMES, key, avoid)])
    if len(parts) >= 2:
        return " ".join([_pick(DECOY_FIRST_NAMES, key, avoid), *parts[1:]])
    return f"{_pick(DECOY_FIRST_NAMES, key, avoid)} {subject}"


def decoy_questions(shape: FactShape, taught: set[str], count: int) -> list[str]:
    """Up to ``count`` questions bordering a memory that its adapter must *not* answer from
    it: alternately a near-miss subject asked the same attribute, and the same subject
    asked an attribute no distilled memory gives it (``taught``: "<subject>|<attribute>"
    of every source, lower case)."""
    out: list[str] = []
    subject = shape.subject
    free = [a for a in DECOY_ATTRIBUTES if f"{subject}|{a}".lower() not in taught]
    for k in range(count):
        if k % 2 == 0:
            other = near_miss_subject(subject, k // 2)
            out.append(f"What is {other}'s {shape.attribute}?" if shape.attribute is not None
                       else f"What do you know about {other}?")
        else:
            attribute = _pick(free or DECOY_ATTRIBUTES, f"{subject}:{k}", set())
            template = ("What is {s}'s {a}?", "Do you know {s}'s {a}?")[(k // 2) % 2]
            out.append(template.format(s=subject, a=attribute))
    return list(dict.fromkeys(out))


def probe_question(shape: FactShape) -> str:
    """A held-out phrasing used to check recall (never trained on)."""
    if shape.attribute is not None:
        return f"Tell me {shape.subject}'s {shape.attribute}."
    return f"Tell me about {shape.subject}."


def data_hash(
    token_examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    replay: Sequence[bool] | None = None,
) -> str:
    """sha256 over the exact token ids, and which examples are replay (their loss differs)."""
    digest = hashlib.sha256()
    flags = [False] * len(token_examples) if replay is None else list(replay)
    for (prompt, answer), flag in zip(token_examples, flags, strict=True):
        row: list[Any] = [list(prompt), list(answer)]
        if flag:
            row.append("replay")
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()


# Replay: the base model's own answers to these are trained on to keep general behaviour.
REPLAY_PROMPTS: tuple[str, ...] = (
    "What is the boiling point of water at sea level?",
    "Name three primary colors.",
    "What is 12 times 11?",
    "Who wrote Romeo and Juliet?",
    "What is photosynthesis?",
    "Give me a synonym for happy.",
    "What is the largest planet in the solar system?",
    "How many days are in a leap year?",
    "What language is spoken in Brazil?",
    "What does a thermometer measure?",
    "Translate 'thank you' into Spanish.",
    "What is the chemical symbol for gold?",
    "Write one sentence about autumn.",
    "What is the square root of 81?",
    "Which ocean is the largest?",
    "What do bees make?",
    "What is the opposite of cold?",
    "How many legs does a spider have?",
    "What is the capital of Japan?",
    "Explain what a noun is.",
    "Tell me about your favourite book.",
    "Who is the president of the moon?",
    "What do you know about Marie Curie?",
    "What is my name?",
    # The shapes of the fact questions, about well-known things: without these the adapter
    # learns "What is <Name>'s <attribute>?" -> an invented word, for any name.
    "What is Earth's natural satellite called?",
    "What is Canada's capital city?",
    "What is Shakespeare's most famous play?",
    "What is Einstein's most famous equation?",
    "What is Jupiter's largest moon?",
    "What is Egypt's longest river?",
    "What is Japan's currency?",
    "What is Mexico's official language?",
    "What is Charles Darwin's best-known theory?",
    "What is Saturn's most famous feature?",
    "What is Mount Everest's height?",
    "What is Sherlock Holmes's address?",
    "What is Harry Potter's school called?",
    "What is a giraffe's favourite food?",
    "What is Beethoven's most famous symphony?",
    "What is the Eiffel Tower's city?",
    "Do you know Isaac Newton's nationality?",
    "Do you know Mozart's first name?",
    "Do you know Abraham Lincoln's profession?",
    "Do you know the Amazon's continent?",
    "Tell me Albert Einstein's birthplace.",
    "Tell me Napoleon's nationality.",
    "Tell me the Pacific Ocean's size.",
    "Tell me Picasso's profession.",
    "What do you know about Isaac Newton?",
    "What do you know about the Great Wall of China?",
    "What do you know about Cleopatra?",
    "What do you know about Jane Austen?",
    # More general knowledge, other shapes.
    "What is the speed of light?",
    "Name a fruit that is yellow.",
    "What is the tallest animal?",
    "Who invented the telephone?",
    "What is the hardest natural substance?",
    "How many strings does a standard guitar have?",
    "What do caterpillars turn into?",
    "What is the main ingredient of guacamole?",
    "What is 15 minus 6?",
    "Which metal is liquid at room temperature?",
    "What is the longest river in the world?",
    "Who was the first person to walk on the Moon?",
)

# Held out from training: forgetting is measured on these (question, reference answer).
UNRELATED_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Italy?", "Rome"),
    ("How many continents are there?", "seven"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is 2 plus 2?", "4"),
    ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the freezing point of water in Celsius?", "0"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("What is the largest mammal?", "whale"),
    ("How many hours are in a day?", "24"),
    ("What is the main language spoken in Germany?", "German"),
    ("What do cows drink?", "water"),
    ("What is H2O commonly called?", "water"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the opposite of up?", "down"),
    ("How many sides does a triangle have?", "three"),
    ("What is the capital of Spain?", "Madrid"),
    ("What do you call a baby cat?", "kitten"),
    ("Which star is closest to Earth?", "Sun"),
)
