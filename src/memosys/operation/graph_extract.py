"""LLM-free entity and relation extraction: what one memory contributes to the graph.

Rules, not a model, so it runs at ingest speed (a few tens of microseconds per memory)
and is deterministic (rebuilds rely on that):

- **named entities**: runs of capitalised words ("Melanie", "New York", "Sunrise
  Adoption Agency"), skipping sentence-initial function words and interjections; "the"
  and possessives are normalised away ("Melanie's" -> Melanie). The type comes from cue
  words: organisation suffixes (Agency, University, Inc ...), a preposition of place
  ("in", "from", "to" + a name), event words (Festival, Parade ...), else a single word is
  taken for a person and a longer name for a concept.
- **relative references**: "my sister", "our kids", "my dog" said by Caroline become the
  entity "Caroline's sister" (owner + role); "Melanie's kids" likewise. When the text says
  who it is ("my sister Anna", "Anna, my sister", "my sister's name is Anna") a RELATION
  Caroline -sister-> Anna is stated, and the store resolves the relative reference to Anna
  from then on.
- **relations** from a few sentence patterns with the speaker (I/my) or a named subject:
  lives_in / moved_to (functional: one place at a time), works_at, job ("work as a ..."),
  from, spouse, visited, likes.
- the **speaker** of a chat message (metadata "speaker") is an entity of the memory too.

Memories extracted by the MemReader (fact, preference, event types, written in the third
person: "Caroline lives in Paris", with `metadata["about"]` naming the person) go through
the same patterns with a higher confidence, `about` standing in for the speaker. When the
MemReader contradicts a fact it invalidates the old memory with a `valid_to`: its
relations stay as history and end then.
"""

from __future__ import annotations

import re

from memosys.infra.vault.fts_query import STOPWORDS
from memosys.infra.vault.graph_base import (
    EntityRef,
    EntityType,
    MemoryGraph,
    RelationRef,
    entity_key,
)
from memosys.operation.context import body_text
from memosys.types import MemoryItem, MemoryType

# Relational nouns: "my <role>" is an entity owned by the speaker.
_ROLES: dict[str, tuple[str, EntityType]] = {}
for _words, _etype in (
    ("sister brother mother father husband wife partner boyfriend girlfriend son daughter "
     "friend boss grandmother grandfather aunt uncle cousin niece nephew fiance fiancee "
     "neighbor neighbour roommate colleague coworker mentor therapist teacher", EntityType.PERSON),
    ("kids children family parents siblings friends grandkids grandchildren", EntityType.PERSON),
    ("dog cat puppy kitten pet pets horse", EntityType.OBJECT),
    ("home house apartment car job company team band school", EntityType.OBJECT),
):
    for _w in _words.split():
        _ROLES[_w] = (_w, _etype)
for _alias, _canon in (("mom", "mother"), ("mum", "mother"), ("mommy", "mother"),
                       ("dad", "father"), ("daddy", "father"), ("hubby", "husband"),
                       ("grandma", "grandmother"), ("grandpa", "grandfather"),
                       ("children", "kids"), ("bf", "boyfriend"), ("gf", "girlfriend"),
                       ("neighbour", "neighbor"), ("coworker", "colleague"),
                       ("fiancee", "fiance"), ("grandchildren", "grandkids")):
    _ROLES[_alias] = (_canon, _ROLES.get(_canon, (_canon, EntityType.PERSON))[1])

FUNCTIONAL_ROLES = frozenset({"mother", "father", "husband", "wife", "partner", "boyfriend",
                              "girlfriend", "fiance", "boss"})
"""One at a time: a new one replaces the old in "as of" queries."""
_GROUP_ROLES = frozenset("kids family parents siblings friends grandkids".split())
_NAMEABLE_ROLES = frozenset(r for r, t in _ROLES.values()
                            if t == EntityType.PERSON and r not in _GROUP_ROLES) | {
    "dog", "cat", "puppy", "kitten", "pet", "horse", "band", "team", "company", "school"}

# Capitalised words that are not names when they open a sentence (or stand alone).
_NOT_NAMES = frozenset("""
a an the and or but if so yes no yeah yep nope ok okay oh wow hey hi hello thanks thank
great awesome cool nice sure well hmm haha lol omg i i'm i've i'll i'd im ive me my mine we
we're we've our you you're you've your he she it it's its they they're their them this
that these those there here what what's when where who why how which do does did is are
was were be been have has had can could would should will just also really totally
definitely absolutely maybe perhaps actually anyway congrats congratulations sorry please
good bad love like glad happy sounds looks that's there's here's let's don't didn't can't
wasn't isn't aren't not never always sometimes today yesterday tomorrow tonight last next
monday tuesday wednesday thursday friday saturday sunday january february march april may
june july august september october november december mr mrs ms dr as at by for from in
into of on to with after before during since until about exactly absolutely true right
agreed same me too both all some any every each one two three first then now once again
speaking being having getting going keep keeping take taking make making thinking
super art life music work hope love fun wow yay aww ah uh um nah hmm yup alright cheers
whoa oops ugh bye see talk tell look let try stay enjoy check remember guess wish mine
kinda gonna wanna gotta even still only much very quite pretty lots lot woohoo yay
mon tue tues wed thu thur thurs fri sat sun summer winter spring autumn fall whenever
perfect identity
""".split())
_ALONE_NOT_NAMES = frozenset("new old big little great north south east west".split())
"""Words that start names ("New York") but are none on their own."""
_MONTHS_DAYS = frozenset("""monday tuesday wednesday thursday friday saturday sunday january
february march april may june july august september october november december""".split())
_ORG_SUFFIX = frozenset("""agency university college school inc corp corporation company
co ltd llc club association foundation institute center centre hospital clinic bank
church group society council museum library studio shelter network organization
organisation team band""".split())
_EVENT_WORDS = frozenset("""festival parade conference concert party wedding marathon
race fair expo summit ceremony championship cup game show tour week day night""".split())
_PLACE_WORDS = frozenset("""city town village street avenue road park lake river mountain
mountains beach island county state country bay valley forest canyon""".split())
_PLACE_PREPS = frozenset({"in", "from", "to", "at", "near", "visited", "visit", "visiting"})

_NAME = r"[A-Z][\w'\u2019&\-]*(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][\w'\u2019&\-]*)*"
_TOKEN = re.compile(_NAME + r"|[\w'\u2019]+|[.!?;:]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_ROLE_WORDS = "|".join(sorted(_ROLES, key=len, reverse=True))
_OWN = re.compile(rf"\b((?i:my|our)|(?P<owner>{_NAME})(?:'s|\u2019s))\s+"
                  rf"(?P<role>(?i:{_ROLE_WORDS}))\b")
_PRONOUN_SUBJECT = r"(?:I|I'm|I am|we|We)"

# (pattern, predicate, functional). Group "s": subject (absent: the speaker), "o": object.
_RELATIONS: list[tuple[re.Pattern[str], str, bool]] = [
    (re.compile(rf"\b(?i:my|our)\s+(?P<role>{_ROLE_WORDS})(?:'s name is|,|\s+is named|\s+named|"
                rf"\s+called|\s+is|)\s+(?P<o>{_NAME})"), "role", False),
    (re.compile(rf"(?P<o>{_NAME}),?\s+(?:is\s+)?my\s+(?P<role>{_ROLE_WORDS})\b"), "role", False),
    (re.compile(rf"(?P<s>{_NAME})(?:'s|\u2019s)\s+(?P<role>{_ROLE_WORDS})(?:,|\s+is|\s+named|)"
                rf"\s+(?P<o>{_NAME})"), "role", False),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+)?(?:(?:I|we)\s+|I'm\s+|I am\s+)?(?:live|lives|living|"
                rf"am living|have lived|has lived|settled)\s+in\s+(?P<o>{_NAME})"),
     "lives_in", True),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+)?(?:moved|relocated|am moving|is moving|'m moving)"
                rf"\s+(?:back\s+)?to\s+(?P<o>{_NAME})"), "lives_in", True),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+)?(?:work|works|working|am working|started working|"
                rf"got a job|started a job|have a job|has a job|got hired|was hired|am employed|"
                rf"is employed)\s+(?:at|for|with)\s+(?P<o>{_NAME})"), "works_at", True),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+)?(?:work|works|working|started working)\s+as\s+"
                r"(?:an?\s+)?(?P<job>[a-z][a-z\-]+(?:\s+[a-z][a-z\-]+)?)"), "job", True),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+(?:is|was)|{_PRONOUN_SUBJECT}|I was)\s+(?:originally\s+)?"
                rf"from\s+(?P<o>{_NAME})"), "from", True),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+)?grew up in\s+(?P<o>{_NAME})"), "from", True),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+(?:is|got)|I'm|I am|I got|we got)\s+married\s+to\s+"
                rf"(?P<o>{_NAME})"), "spouse", True),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+)?(?:visited|went to|traveled to|travelled to|"
                rf"was in|trip to)\s+(?P<o>{_NAME})"), "visited", False),
    (re.compile(rf"\b(?:(?P<s>{_NAME})\s+)?(?:love|loves|like|likes|enjoy|enjoys|adore|adores)"
                rf"\s+(?P<o>{_NAME})"), "likes", False),
]

_TRIGGERS: list[tuple[str, ...]] = [
    ("my ", "our "), ("my ",), ("'s ", "\u2019s "), ("live", "settled"),
    ("moved", "relocated", "moving"),
    ("work", "job", "hired", "employed"), ("work",), ("from",), ("grew up",), ("married",),
    ("visit", "went to", "traveled", "travelled", "was in", "trip to"),
    ("love", "like", "enjoy", "adore"),
]
"""Words each of `_RELATIONS` needs (same order): a substring test skips the regex."""

EPISODE_CONFIDENCE = 0.6
EXTRACTED_CONFIDENCE = 0.85
"""MemReader facts were extracted and reconciled already: their statements count more."""


def extract_graph(item: MemoryItem) -> MemoryGraph:
    """The `GraphDeriver` installed by the runtime (deterministic, no model)."""
    speaker = item.metadata.get("speaker")
    speaker = speaker if isinstance(speaker, str) and speaker.strip() else None
    about = item.metadata.get("about")
    about = about if isinstance(about, str) and about.strip() else None
    text = body_text(item)
    graph = MemoryGraph()
    seen: set[str] = set()

    def add(ref: EntityRef) -> EntityRef:
        if ref.key and ref.key not in seen:
            seen.add(ref.key)
            graph.entities.append(ref)
        return ref

    if speaker:
        add(EntityRef(speaker, EntityType.PERSON, speaker=True))
    elif about:  # a MemReader fact: the person it is about
        add(EntityRef(about, EntityType.PERSON))
    for ref in named_entities(text, known={speaker} if speaker else set()):
        add(ref)
    for ref in relative_references(text, speaker or about):
        add(ref)
    confidence = EPISODE_CONFIDENCE if item.memory_type == MemoryType.EPISODE \
        else EXTRACTED_CONFIDENCE
    for sentence in _SENTENCE.split(text):
        for rel in _sentence_relations(sentence, speaker or about, confidence):
            if entity_key(rel.subject) not in seen:
                continue
            if entity_key(rel.object) not in seen:
                if rel.predicate != "job":
                    continue  # the object must be a name found in the text
                add(EntityRef(rel.object, EntityType.CONCEPT))
            if rel not in graph.relations:
                graph.relations.append(rel)
    return graph


def named_entities(text: str, known: set[str] | None = None) -> list[EntityRef]:
    """Capitalised names in a text (query linking uses this too)."""
    known_keys = {entity_key(k) for k in (known or set()) if k}
    out: list[EntityRef] = []
    for sentence in _SENTENCE.split(text):
        tokens = list(_TOKEN.finditer(sentence))
        for n, match in enumerate(tokens):
            span = match.group(0)
            if not span[:1].isupper():
                continue
            words = span.split()
            # An opening function word ("Thanks Melanie", "The Louvre") is not the name.
            while words and entity_key(words[0]) in _NOT_NAMES:
                words = words[1:]
            while words and (words[-1].lower() in {"of", "de", "the"}
                             or entity_key(words[-1]) in _NOT_NAMES):
                words = words[:-1]
            if not words:
                continue
            name = " ".join(words).strip("'\u2019-&")
            name = re.sub(r"(?:'s|\u2019s|')$", "", name)
            key = entity_key(name)
            if not key or key in _NOT_NAMES or key in _ALONE_NOT_NAMES or len(key) < 2 \
                    or key.isdigit():
                continue
            if re.search(r"['\u2019](?!s\b)", name):
                continue  # a contraction ("They've", "How'd"), not a name
            prev = tokens[n - 1].group(0).lower() if n > 0 else ""
            opener = (n == 0 or prev in ".!?;:") and len(words) == len(span.split())
            weak = False
            if len(words) == 1 and key not in known_keys and key.endswith(("ing", "ly", "ed")):
                continue  # "Knowing", "Honestly": names rarely end so
            if opener and len(words) == 1 and key not in known_keys:
                if not _looks_like_name(name):
                    continue  # "Painting is fun": an ordinary word
                # "Appreciate it!": a name only if the cube already knows it as one
                weak = True
            out.append(EntityRef(name, _entity_type(words, prev), weak=weak))
    return out


def relative_references(text: str, speaker: str | None) -> list[EntityRef]:
    """"my sister" (with a speaker), "Melanie's kids" -> owner + role references."""
    out = []
    for match in _OWN.finditer(text):
        role, etype = _ROLES[match.group("role").lower()]
        owner = match.group("owner")
        if owner is None:
            if speaker is None:
                continue
            owner = speaker
        else:
            owner = re.sub(r"^(?:[Tt]he)\s+", "", owner)
            if entity_key(owner) in _NOT_NAMES:
                continue
        out.append(EntityRef(role, etype, owner=owner, role=role))
    return out


def _sentence_relations(sentence: str, speaker: str | None,
                        confidence: float) -> list[RelationRef]:
    out: list[RelationRef] = []
    sentence = sentence.strip()
    first = sentence.split(" ", 1)[0].strip(",.!?")
    if first[:1].isupper() and (entity_key(first) in _NOT_NAMES or not _looks_like_name(first)):
        sentence = sentence[:1].lower() + sentence[1:]  # "Works at Acme" is no name
    lower = sentence.lower()
    for (pattern, predicate, functional), triggers in zip(_RELATIONS, _TRIGGERS, strict=True):
        if not any(t in lower for t in triggers):
            continue  # cheap test first: most sentences state no relation
        for match in pattern.finditer(sentence):
            groups = match.groupdict()
            subject = _clean_name(groups.get("s")) or speaker
            if predicate == "role":
                role = _ROLES[groups["role"].lower()][0]
                if role not in _NAMEABLE_ROLES:
                    continue
                pred, func = role, role in FUNCTIONAL_ROLES
            else:
                pred, func = predicate, functional
            obj = groups.get("o") or groups.get("job")
            if subject is None or not obj:
                continue
            if groups.get("job") is None:
                obj = _clean_name(obj) or ""
            else:
                obj = " ".join(w for w in obj.split() if w not in STOPWORDS)
            if not obj or entity_key(obj) in _NOT_NAMES or entity_key(obj) == entity_key(
                    subject):
                continue
            out.append(RelationRef(subject, pred, obj, confidence, func))
    return out


def canonical_role(word: str) -> str | None:
    """"mom" -> "mother", "children" -> "kids"; None for a word that is no role."""
    found = _ROLES.get(word.lower())
    return found[0] if found else None


def _clean_name(span: str | None) -> str | None:
    """A matched name without leading function words ("Yesterday Caroline" -> Caroline)."""
    if not span:
        return None
    words = span.split()
    while words and entity_key(words[0]) in _NOT_NAMES:
        words = words[1:]
    while words and entity_key(words[-1]) in _NOT_NAMES | {"of", "de"}:
        words = words[:-1]
    name = re.sub(r"(?:'s|\u2019s|')$", "", " ".join(words))
    return name if entity_key(name) and entity_key(name) not in _NOT_NAMES else None


def _looks_like_name(word: str) -> bool:
    """A sentence-initial capitalised word counts as a name unless it looks like an
    ordinary word: names rarely end in -ing, -ed, -ly, -s, -tion, -ness, -ment, -ful."""
    lower = word.lower()
    return len(word) > 2 and lower not in _ROLES and not lower.endswith(_COMMON_ENDINGS)


_COMMON_ENDINGS = ("ing", "ed", "ly", "s", "tion", "ness", "ment", "ful", "ity", "ive", "ous",
                   "able", "ible", "est", "er")


def _entity_type(words: list[str], prev: str) -> EntityType:
    last = words[-1].lower()
    if len(words) == 1 and len(words[0]) > 1 and words[0].isupper():
        return EntityType.CONCEPT  # an acronym: LGBTQ, NASA
    if last in _ORG_SUFFIX or any(w.lower() in _ORG_SUFFIX for w in words[1:]):
        return EntityType.ORGANISATION
    if last in _EVENT_WORDS or any(w.lower() in _MONTHS_DAYS for w in words):
        return EntityType.EVENT
    if last in _PLACE_WORDS or prev in _PLACE_PREPS:
        return EntityType.PLACE
    return EntityType.PERSON if len(words) <= 2 else EntityType.CONCEPT


def _guess_object_type(predicate: str) -> EntityType:
    if predicate in ("lives_in", "from", "visited"):
        return EntityType.PLACE
    if predicate == "works_at":
        return EntityType.ORGANISATION
    if predicate == "job":
        return EntityType.CONCEPT
    if predicate == "likes":
        return EntityType.CONCEPT
    return _ROLES.get(predicate, (predicate, EntityType.PERSON))[1]
