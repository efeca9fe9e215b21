"""Conversation structure of each cube, kept in memory for retrieval.

Retrieval stages need, for every candidate memory, a few facts that a text or vector index
does not give: which session it belongs to and its neighbours there (the turn before is
often the question that a short answer replies to), who said it, its event time, and how
much it says. `ConversationIndex` keeps these per cube in this process, like the vector
index: a rebuildable cache of the vault, never the source of truth.

It stays current through the cube's version clock: a search first compares the clock with
the one the cache was built at and applies `vault.changes_since` (or rebuilds after many
writes), so memories written by other processes are seen too. Purged memories leave a
harmless stale entry (they can no longer be found by search) until the next rebuild.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, field

from memosys.infra.vault.base import ItemFilter, Vault
from memosys.infra.vault.fts_query import STOPWORDS
from memosys.operation.consolidate_plan import is_synthesised
from memosys.operation.query import has_time_expression
from memosys.types import MemoryItem, MemoryState, MemoryType

_WORD = re.compile(r"\w+", re.UNICODE)
_NAME = re.compile(r"\b[A-Z][^\W\d_]+")
REBUILD_AFTER_COMMITS = 64
"""More commits than this since the last sync: rebuild instead of replaying changes."""


def body_text(item: MemoryItem) -> str:
    """The text without the "Speaker: " prefix that chat messages are stored with."""
    speaker = item.metadata.get("speaker")
    prefix = f"{speaker}: " if speaker else None
    return item.text[len(prefix):] if prefix and item.text.startswith(prefix) else item.text


def is_turn(item: MemoryItem) -> bool:
    """A message of a conversation: an episode with a session and a chat role. Only turns
    get the conversational stages (neighbours, session, length prior); facts, documents and
    free-text episodes are ranked on their match alone."""
    role = item.source.role
    return (item.memory_type == MemoryType.EPISODE and item.source.session is not None
            and role is not None and role != "document")


def content_words(text: str) -> list[str]:
    """Lower-cased words that are not stopwords or numbers."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and not w.isdigit()]


@dataclass
class TurnInfo:
    """What retrieval knows about one memory besides its text."""

    session: str | None
    speaker: str | None
    event_ts: float
    length: int
    """Content words in the text (the speaker prefix not counted)."""
    has_time: bool
    """The text anchors itself in time ("yesterday", "last May", "2022", ...)."""
    key: int
    """Order of arrival in the cube: a session's memories are kept in the order they were
    stored (which, for chat, is the order they were said; event times cannot be trusted
    for that: a message without a timestamp takes the time it was stored)."""
    state: MemoryState = MemoryState.ACTIVE
    turn: bool = False
    """A conversation turn (`is_turn`): linked to its session neighbours."""
    names: frozenset[str] = frozenset()
    """Lower-cased capitalised words of a memory that is not a turn (who a fact is about;
    a turn is about its speaker)."""
    sources: tuple[str, ...] = ()
    """The memories this one was derived from (`derived_from`): an extracted fact or a
    summary is an extra key for them."""
    aggregate: bool = False
    """A synthesised memory (a profile, a topic summary) that restates many others."""


@dataclass
class CubeContext:
    clock: int = -1
    turns: dict[str, TurnInfo] = field(default_factory=dict)
    sessions: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    links: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    """(previous, next) memory of the same session, kept current on every change."""
    speakers: Counter[str] = field(default_factory=Counter)
    doc_freq: Counter[str] = field(default_factory=Counter)
    docs: int = 0
    turn_lengths: Counter[int] = field(default_factory=Counter)
    """How many conversation turns have each length (content words)."""
    aggregates: frozenset[str] = frozenset()
    """Active synthesised memories: retrieval ranks them in a lane of their own. Replaced,
    never changed in place, so a search may read it while a sync updates the context."""
    _seq: int = 0

    def neighbours(self, item_id: str) -> tuple[str | None, str | None]:
        """The memories just before and after this one in its session."""
        return self.links.get(item_id, (None, None))

    def _link(self, session: str, key: int, item_id: str) -> None:
        order = self.sessions.setdefault(session, [])
        entry = (key, item_id)
        pos = bisect.bisect_left(order, entry)
        order.insert(pos, entry)
        self._relink(order, pos - 1, pos + 2)

    def _unlink(self, session: str, key: int, item_id: str) -> None:
        order = self.sessions.get(session, [])
        pos = bisect.bisect_left(order, (key, item_id))
        if pos < len(order) and order[pos][1] == item_id:
            order.pop(pos)
            self.links.pop(item_id, None)
            self._relink(order, pos - 1, pos + 1)

    def _relink(self, order: list[tuple[int, str]], start: int, stop: int) -> None:
        for i in range(max(start, 0), min(stop, len(order))):
            self.links[order[i][1]] = (order[i - 1][1] if i > 0 else None,
                                       order[i + 1][1] if i + 1 < len(order) else None)

    def mean_log_length(self, cap: int) -> float:
        """Mean of log(1 + min(length, cap)) over the cube's conversation turns."""
        total = sum(self.turn_lengths.values())
        if total == 0:
            return 0.0
        return sum(n * math.log1p(min(length, cap))
                   for length, n in list(self.turn_lengths.items())) / total

    def idf(self, word: str) -> float:
        return math.log(1 + self.docs / (1 + self.doc_freq.get(word, 0)))

    def add(self, item: MemoryItem) -> None:
        old = self.turns.get(item.id)
        body = body_text(item)
        words = content_words(body)
        speaker = item.metadata.get("speaker")
        speaker = str(speaker) if speaker else None
        turn = is_turn(item)
        session = item.source.session if turn else None
        event_ts = item.event_time.timestamp()
        if old is None:
            self._seq += 1
            key = self._seq
            self.docs += 1
            self.doc_freq.update(set(words))
        else:
            key = old.key
            if old.turn:
                self.turn_lengths[old.length] -= 1
            if old.speaker:
                self.speakers[old.speaker] -= 1
            if old.session is not None:
                self._unlink(old.session, old.key, item.id)
        if speaker:
            self.speakers[speaker] += 1
        if session is not None:
            self._link(session, key, item.id)
        if turn:
            self.turn_lengths[len(words)] += 1
        names = frozenset() if turn else frozenset(
            w.lower() for w in _NAME.findall(body) if len(w) > 2)
        aggregate = is_synthesised(item)
        if aggregate and item.state == MemoryState.ACTIVE:
            if item.id not in self.aggregates:
                self.aggregates = self.aggregates | {item.id}
        elif item.id in self.aggregates:
            self.aggregates = self.aggregates - {item.id}
        self.turns[item.id] = TurnInfo(session, speaker, event_ts, len(words),
                                       has_time_expression(body), key, item.state, turn, names,
                                       tuple(item.derived_from), aggregate)


class ConversationIndex:
    """Per-cube `CubeContext`s, synced with the vault on use."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self._cubes: dict[str, CubeContext] = {}
        self._lock = threading.Lock()

    def get(self, cube_id: str) -> CubeContext:
        clock = self.vault.get_cube(cube_id).clock
        ctx = self._cubes.get(cube_id)
        if ctx is not None and ctx.clock == clock:
            return ctx
        with self._lock:  # one sync at a time
            ctx = self._cubes.get(cube_id)
            if ctx is not None and ctx.clock == clock:
                return ctx
            if ctx is None or clock - ctx.clock > REBUILD_AFTER_COMMITS or clock < ctx.clock:
                ctx = self._build(cube_id, clock)
                self._cubes[cube_id] = ctx
            else:
                # In place: a concurrent reader sees each turn either before or after.
                changed = [c.current for c in self.vault.changes_since(cube_id, ctx.clock)]
                for item in sorted(changed, key=lambda i: (i.created_at, i.id)):
                    ctx.add(item)
                ctx.clock = clock
            return ctx

    def _build(self, cube_id: str, clock: int) -> CubeContext:
        ctx = CubeContext(clock=clock)
        flt = ItemFilter(cube_ids=(cube_id,), states=())
        items: list[MemoryItem] = []
        while batch := self.vault.list_items(flt, limit=1000, offset=len(items)):
            items.extend(batch)
        for item in reversed(items):  # listed newest first: replay in order of arrival
            ctx.add(item)
        return ctx

    def forget(self, cube_id: str) -> None:
        with self._lock:
            self._cubes.pop(cube_id, None)
