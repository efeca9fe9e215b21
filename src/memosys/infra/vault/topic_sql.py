"""The multi-level index (cube -> topics -> memories) in SQL that both backends run.

A *topic* is a cluster of a cube's memories by embedding: a centroid, its members, a
label and a short summary. It is kept current inside the vault's own write transactions,
like the graph (`on_commit_topics` from `commit`, `on_purge_topics` from `purge`):

- a new (or re-embedded, or restored) memory joins the topic whose centroid is nearest,
  when the cosine similarity reaches `TopicPolicy.threshold`, else it starts a new topic;
- a deleted memory leaves its topic (an emptied topic is dropped);
- a topic that grows past `TopicPolicy.max_size` is split in two (2-means on its members);
- every topic a write touched gets its keywords, label and summary recomputed from the
  texts of its *current* members, so a purged memory's text survives in no label or
  summary. A model-written summary (`topic_set_summary`) is kept while memories only join;
  when one leaves (delete, purge, re-embedding), the topic falls back to its keyword
  summary until the model summarises it again.

Tables (same columns on SQLite and PostgreSQL): `topics`, `topic_members` (one topic per
memory, with a copy of its unit vector so centroids can be updated and split without the
backend's vector store), `topic_terms` (each topic's keywords, so labels can prefer
words that set a topic apart from the cube's other topics).
"""

from __future__ import annotations

import json
import math
import re
import time
from abc import abstractmethod
from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from memosys.infra.vault.fts_query import STOPWORDS
from memosys.infra.vault.graph_sql import GraphDB, _chunks
from memosys.types import MemoryItem, MemoryState, new_id


@dataclass(frozen=True)
class Topic:
    id: str
    cube_id: str
    label: str
    summary: str
    memory_ids: tuple[str, ...]
    """Members, most central first."""
    size: int
    updated_at: datetime
    keywords: tuple[str, ...] = ()
    summary_by: str = "keywords"
    """"keywords" (computed in the store) or "model" (written by `topic_set_summary`)."""
    revision: int = 0
    """Bumped on every change of membership (a model summary names the revision it read)."""


@dataclass(frozen=True)
class TopicPolicy:
    threshold: float = 0.45
    """Cosine similarity to a topic's centroid needed to join it (else: a new topic)."""
    max_size: int = 60
    """A topic that grows past this is split in two."""
    label_words: int = 3
    summary_words: int = 6


# --- keywords ------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]+")
# Chat filler that is not a stopword for search but names no topic.
_FILLER = frozenset(
    """yeah yes wow hey thanks thank really great awesome cool oh just like know think
    it's i'm that's you're don't can't didn't i've i'll we're they're it'll there's what's
    sounds sound glad good nice love lot lots much also sure totally definitely amazing
    get got going go gonna make made way things thing something anything everything
    one two time times day days well see seen said say feel felt keep let us always
    really pretty super""".split())


def terms(text: str) -> set[str]:
    """The content words of one memory (lower-cased, no stopwords or chat filler)."""
    words = (w.lower().strip("'-") for w in _WORD.findall(text))
    return {w for w in words if len(w) > 2 and w not in STOPWORDS and w not in _FILLER}


def _snippet(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"


def _unit(vec: np.ndarray) -> np.ndarray | None:
    v = np.asarray(vec, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 and math.isfinite(norm) else None


def _blob(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype=np.float32).tobytes()


def _vec(blob: Any) -> np.ndarray:
    return np.frombuffer(bytes(blob), dtype=np.float32).copy()


def _shareable_text(doc: str) -> tuple[str, str]:
    """A member's text as labels may use it, and its speaker: private or
    sensitive-labelled memories lend no words to a topic's label or summary (every reader
    of the cube sees those)."""
    data = json.loads(doc)
    speaker = str((data.get("metadata") or {}).get("speaker") or "")
    if data.get("visibility") == "private" or data.get("sensitivity"):
        return "", speaker
    return str(data.get("text") or ""), speaker


# --- writes --------------------------------------------------------------------------------
def on_commit_topics(db: GraphDB, cube_id: str,
                     items: Sequence[tuple[MemoryItem, np.ndarray | None]],
                     policy: TopicPolicy | None) -> None:
    """Bring the topics of freshly written memories up to date (inside the caller's
    transaction). `items`: (the stored item, its new embedding or None if unchanged)."""
    if policy is None or not items:
        return
    last: dict[str, tuple[MemoryItem, np.ndarray | None]] = {}
    for item, vec in items:  # one id written twice in a batch: its last state counts
        earlier = last.get(item.id)
        last[item.id] = (item, vec if vec is not None or earlier is None else earlier[1])
    items = list(last.values())
    ids = [item.id for item, _ in items]
    current: dict[str, str] = {}
    for chunk in _chunks(ids):
        where, params = db.any_of("item_id", chunk)
        current.update((r[0], r[1]) for r in db.rows(
            f"SELECT item_id, topic_id FROM topic_members WHERE {where}", params))
    leave: list[str] = []
    join: list[tuple[str, np.ndarray]] = []
    need: list[str] = []
    for item, vec in items:
        member = item.state != MemoryState.DELETED and bool(item.text.strip())
        if item.id in current and (not member or vec is not None):
            leave.append(item.id)
        if member and (vec is not None or item.id not in current):
            if vec is None:
                need.append(item.id)
            else:
                join.append((item.id, vec))
    if need:  # restored by a rollback, or written before with the topics switched off
        for chunk in _chunks(need):
            stored = db.vectors(chunk)
            join.extend((i, stored[i]) for i in chunk if i in stored)
    emptied = _leave(db, leave)
    joined = _join(db, cube_id, join, policy)
    _refresh(db, cube_id, _split(db, cube_id, emptied | joined, policy), policy,
             reset_model=emptied)


def on_purge_topics(db: GraphDB, ids: Sequence[str], policy: TopicPolicy | None) -> None:
    """Purged memories leave their topics, and those topics' label and summary are made
    again from the surviving members (inside the purge transaction). Runs whether or
    not topics are kept now: old topics must not keep purged text either."""
    if not ids:
        return
    by_cube: dict[str, set[str]] = {}
    for chunk in _chunks(list(dict.fromkeys(ids))):
        where, params = db.any_of("m.item_id", chunk)
        for cube_id, topic_id in db.rows(
                f"SELECT DISTINCT m.cube_id, m.topic_id FROM topic_members m WHERE {where}",
                params):
            by_cube.setdefault(cube_id, set()).add(topic_id)
    touched = _leave(db, list(ids))
    for cube_id, topics in sorted(by_cube.items()):
        _refresh(db, cube_id, topics & touched, policy or TopicPolicy(), reset_model=touched)


def _leave(db: GraphDB, ids: Sequence[str]) -> set[str]:
    """Take memories out of their topics (centroid sums lose their vectors); returns the
    topics that lost members."""
    lost: dict[str, list[np.ndarray]] = {}
    for chunk in _chunks(ids):
        where, params = db.any_of("item_id", chunk)
        for topic_id, blob in db.rows(
                f"SELECT topic_id, vec FROM topic_members WHERE {where}", params):
            lost.setdefault(topic_id, []).append(_vec(blob))
        db.run(f"DELETE FROM topic_members WHERE {where}", params)
    now = time.time()
    for topic_id, vecs in sorted(lost.items()):
        row = db.rows("SELECT centroid, size FROM topics WHERE id = ?", (topic_id,))
        if not row:
            continue
        total = _vec(row[0][0])
        for v in vecs:
            if v.shape == total.shape:
                total -= v
        db.run("UPDATE topics SET centroid = ?, size = ?, rev = rev + 1, updated_at = ? "
               "WHERE id = ?", (_blob(total), max(0, int(row[0][1]) - len(vecs)), now, topic_id))
    return set(lost)


def _centroids(db: GraphDB, cube_id: str) -> tuple[list[str], list[np.ndarray], list[int]]:
    ids, sums, sizes = [], [], []
    for topic_id, blob, size in db.rows(
            "SELECT id, centroid, size FROM topics WHERE cube_id = ? ORDER BY id", (cube_id,)):
        ids.append(topic_id)
        sums.append(_vec(blob))
        sizes.append(int(size))
    return ids, sums, sizes


def _join(db: GraphDB, cube_id: str, join: Sequence[tuple[str, np.ndarray]],
          policy: TopicPolicy) -> set[str]:
    """Each memory joins the nearest topic at or above the threshold, else starts one;
    centroids move as members arrive, so order matters (arrival order: deterministic)."""
    if not join:
        return set()
    ids, sums, sizes = _centroids(db, cube_id)
    dim = int(np.asarray(join[0][1]).size)
    keep = [n for n, s in enumerate(sums) if s.shape == (dim,)]
    ids, sums, sizes = [ids[n] for n in keep], [sums[n] for n in keep], [sizes[n] for n in keep]
    units = [(_unit(s) if s is not None else None) for s in sums]
    matrix = np.stack([u if u is not None else np.zeros(dim, np.float32) for u in units]) \
        if units else np.zeros((0, dim), np.float32)
    now = time.time()
    fresh: set[str] = set()
    touched: set[str] = set()
    members: list[tuple[Any, ...]] = []
    for item_id, raw in join:
        v = _unit(raw)
        if v is None or v.shape != (dim,):
            continue
        sims = matrix @ v if len(ids) else np.zeros(0, np.float32)
        best = int(np.argmax(sims)) if len(ids) else -1
        if best >= 0 and float(sims[best]) >= policy.threshold:
            sums[best] = sums[best] + v
            sizes[best] += 1
            matrix[best] = _unit(sums[best])
            sim = float(sims[best])
        else:
            ids.append(new_id())
            sums.append(v.copy())
            sizes.append(1)
            matrix = np.vstack([matrix, v[None, :]])
            fresh.add(ids[-1])
            best, sim = len(ids) - 1, 1.0
        touched.add(ids[best])
        members.append((item_id, ids[best], cube_id, sim, _blob(v)))
    for n, topic_id in enumerate(ids):
        if topic_id in fresh:
            db.run("INSERT INTO topics (id, cube_id, label, summary, keywords, summary_by, "
                   "size, centroid, rev, created_at, updated_at) VALUES (?, ?, '', '', '', "
                   "'keywords', ?, ?, 1, ?, ?)",
                   (topic_id, cube_id, sizes[n], _blob(sums[n]), now, now))
        elif topic_id in touched:
            db.run("UPDATE topics SET centroid = ?, size = ?, rev = rev + 1, updated_at = ? "
                   "WHERE id = ?", (_blob(sums[n]), sizes[n], now, topic_id))
    if members:
        db.many("INSERT INTO topic_members (item_id, topic_id, cube_id, similarity, vec) "
                "VALUES (?, ?, ?, ?, ?)", members)
    return touched


def _two_means(vecs: np.ndarray) -> np.ndarray:
    """Deterministic 2-means: seeds are the member farthest from the mean and the member
    farthest from that one; returns a 0/1 label per row."""
    mean = vecs.mean(axis=0)
    a = vecs[int(np.argmin(vecs @ mean))]
    b = vecs[int(np.argmin(vecs @ a))]
    labels = np.zeros(len(vecs), dtype=np.int8)
    for _ in range(8):
        new = (vecs @ b > vecs @ a).astype(np.int8)
        if new.min() == new.max():
            break
        if np.array_equal(new, labels):
            break
        labels = new
        a, b = vecs[labels == 0].mean(axis=0), vecs[labels == 1].mean(axis=0)
    return labels


def _split(db: GraphDB, cube_id: str, topics: set[str], policy: TopicPolicy) -> set[str]:
    """Split topics that grew past max_size; returns the topics to refresh."""
    out = set(topics)
    for topic_id in sorted(topics):
        row = db.rows("SELECT size FROM topics WHERE id = ?", (topic_id,))
        if not row or int(row[0][0]) <= policy.max_size:
            continue
        rows = db.rows("SELECT item_id, vec FROM topic_members WHERE topic_id = ? "
                       "ORDER BY item_id", (topic_id,))
        vecs = np.stack([_vec(r[1]) for r in rows])
        labels = _two_means(vecs)
        if labels.min() == labels.max():
            continue  # all alike: nothing to split on
        now = time.time()
        other = new_id()
        parts = {0: topic_id, 1: other}
        sums = {k: vecs[labels == k].sum(axis=0) for k in (0, 1)}
        db.run("INSERT INTO topics (id, cube_id, label, summary, keywords, summary_by, size, "
               "centroid, rev, created_at, updated_at) VALUES (?, ?, '', '', '', 'keywords', "
               "?, ?, 1, ?, ?)", (other, cube_id, int((labels == 1).sum()), _blob(sums[1]),
                                  now, now))
        db.run("UPDATE topics SET size = ?, centroid = ?, rev = rev + 1, summary_by = "
               "'keywords', updated_at = ? WHERE id = ?",
               (int((labels == 0).sum()), _blob(sums[0]), now, topic_id))
        units = {k: _unit(s) for k, s in sums.items()}
        db.many("UPDATE topic_members SET topic_id = ?, similarity = ? WHERE item_id = ?",
                [(parts[int(k)], float(vecs[n] @ units[int(k)]), rows[n][0])
                 for n, k in enumerate(labels)])
        out.add(other)
        out |= _split(db, cube_id, {topic_id, other}, policy) if max(
            int((labels == 0).sum()), int((labels == 1).sum())) > policy.max_size else set()
    return out


def _keywords(counts: Counter[str], elsewhere: dict[str, int], n_topics: int, size: int,
              limit: int) -> dict[str, float]:
    """A topic's keywords, best first, with their weights: share of members using the word
    times how few other topics have it as a keyword (words every topic has, such as the
    names of the people talking, say little)."""
    def weight(term: str) -> float:
        idf = math.log((1 + n_topics) / (1 + elsewhere.get(term, 0))) + 0.25
        return counts[term] / size * idf

    need = 2 if size >= 3 else 1  # a keyword is shared by members, not one's quirk
    candidates = [t for t, _ in counts.most_common(60)]
    ranked = sorted((t for t in candidates if counts[t] >= need),
                    key=lambda t: (-weight(t), t))[:limit]
    if not ranked:
        ranked = sorted(candidates, key=lambda t: (-weight(t), t))[:3]
    return {t: weight(t) for t in ranked}


def _refresh(db: GraphDB, cube_id: str, topics: set[str], policy: TopicPolicy, *,
             reset_model: AbstractSet[str] = frozenset()) -> None:
    """Drop emptied topics; recompute keywords, label and summary of the others from the
    texts of their current members."""
    if not topics:
        return
    n_topics = int(db.rows("SELECT count(*) FROM topics WHERE cube_id = ?", (cube_id,))[0][0])
    now = time.time()
    for topic_id in sorted(topics):
        rows = db.rows(
            "SELECT m.item_id, m.vec, i.doc FROM topic_members m JOIN items i ON "
            "i.id = m.item_id WHERE m.topic_id = ? ORDER BY m.item_id", (topic_id,))
        db.run("DELETE FROM topic_terms WHERE topic_id = ?", (topic_id,))
        if not rows:
            db.run("DELETE FROM topics WHERE id = ?", (topic_id,))
            continue
        # centrality against the centroid as it is now (members joined a moving one)
        centre = _unit(_vec(db.rows("SELECT centroid FROM topics WHERE id = ?",
                                    (topic_id,))[0][0]))
        sims = [float(_vec(r[1]) @ centre) if centre is not None else 0.0 for r in rows]
        order = sorted(range(len(rows)), key=lambda n: (-sims[n], rows[n][0]))
        db.many("UPDATE topic_members SET similarity = ? WHERE item_id = ?",
                [(sims[n], rows[n][0]) for n in order])
        said = [_shareable_text(rows[n][2]) for n in order]
        speakers = {w for _, who in said for w in terms(who)}
        texts = [t for t, _ in said if t] or [""]
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(terms(text) - speakers)  # the speakers name no subject
        elsewhere: dict[str, int] = {}
        candidates = [t for t, _ in counts.most_common(60)]
        for chunk in _chunks(candidates):
            where, params = db.any_of("term", chunk)
            elsewhere.update((r[0], int(r[1])) for r in db.rows(
                f"SELECT term, count(*) FROM topic_terms WHERE cube_id = ? AND {where} "
                "GROUP BY term", (cube_id, *params)))
        size = len(rows)
        weights = _keywords(counts, elsewhere, n_topics, size, max(8, policy.summary_words))
        ranked = list(weights)
        if ranked:
            db.many("INSERT INTO topic_terms (topic_id, cube_id, term, weight) VALUES "
                    "(?, ?, ?, ?)", [(topic_id, cube_id, t, w) for t, w in weights.items()])
        label = ", ".join(ranked[: policy.label_words]) or _snippet(texts[0], 40) or "private"
        about = ", ".join(ranked[: policy.summary_words])
        noun = "memory" if size == 1 else "memories"
        summary = (f"{size} {noun}" + (f" about {about}" if about else "") + "."
                   + (f" Most typical: \u201c{_snippet(texts[0])}\u201d" if texts[0] else ""))
        keywords = ", ".join(ranked)
        if topic_id in reset_model:
            db.run("UPDATE topics SET label = ?, summary = ?, keywords = ?, summary_by = "
                   "'keywords', size = ?, updated_at = ? WHERE id = ?",
                   (label, summary, keywords, size, now, topic_id))
        else:  # a model summary stays while memories only join
            db.run("UPDATE topics SET label = CASE WHEN summary_by = 'model' THEN label ELSE ? "
                   "END, summary = CASE WHEN summary_by = 'model' THEN summary ELSE ? END, "
                   "keywords = ?, size = ?, updated_at = ? WHERE id = ?",
                   (label, summary, keywords, size, now, topic_id))


# --- the store -----------------------------------------------------------------------------
def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


_TOPIC_COLS = "id, cube_id, label, summary, size, updated_at, keywords, summary_by, rev"


class SQLTopics:
    """Topic queries and the topic index's maintenance, mixed into both vaults."""

    topic_policy: TopicPolicy | None = None

    def set_topic_policy(self, policy: TopicPolicy | None) -> None:
        """Keep topics current on every commit with this policy (None: topics are not
        updated by writes; a purge still erases purged members from existing topics)."""
        self.topic_policy = policy

    @abstractmethod
    def _graph_read(self) -> AbstractContextManager[GraphDB]: ...

    @abstractmethod
    def _graph_write(self) -> AbstractContextManager[GraphDB]: ...

    def _topic(self, db: GraphDB, row: Sequence[Any], limit: int) -> Topic:
        tid, cube_id, label, summary, size, updated, keywords, by, rev = row
        members = tuple(r[0] for r in db.rows(
            "SELECT item_id FROM topic_members WHERE topic_id = ? ORDER BY similarity DESC, "
            "item_id LIMIT ?", (tid, int(limit))))
        return Topic(tid, cube_id, label, summary, members, int(size), _dt(updated),
                     tuple(k for k in keywords.split(", ") if k), by, int(rev))

    def topics_list(self, cube_id: str, *, limit: int = 100, members: int = 1000
                    ) -> list[Topic]:
        """Largest first."""
        with self._graph_read() as db:
            rows = db.rows(f"SELECT {_TOPIC_COLS} FROM topics WHERE cube_id = ? "
                           "ORDER BY size DESC, id LIMIT ?", (cube_id, int(limit)))
            return [self._topic(db, r, members) for r in rows]

    def topic_get(self, topic_id: str, *, members: int = 1000) -> Topic | None:
        with self._graph_read() as db:
            rows = db.rows(f"SELECT {_TOPIC_COLS} FROM topics WHERE id = ?", (topic_id,))
            return self._topic(db, rows[0], members) if rows else None

    def topic_of(self, item_ids: Sequence[str]) -> dict[str, str]:
        """The topic of each memory (those in one)."""
        out: dict[str, str] = {}
        with self._graph_read() as db:
            for chunk in _chunks(list(dict.fromkeys(item_ids))):
                where, params = db.any_of("item_id", chunk)
                out.update((r[0], r[1]) for r in db.rows(
                    f"SELECT item_id, topic_id FROM topic_members WHERE {where}", params))
        return out

    def topic_nearest(self, cube_id: str, vector: np.ndarray, k: int = 3
                      ) -> list[tuple[str, float]]:
        """The k topics whose centroids are nearest to `vector` (cosine), nearest first."""
        v = _unit(vector)
        if v is None:
            return []
        with self._graph_read() as db:
            ids, sums, _ = _centroids(db, cube_id)
        scored = []
        for topic_id, total in zip(ids, sums, strict=True):
            u = _unit(total)
            if u is not None and u.shape == v.shape:
                scored.append((topic_id, float(u @ v)))
        scored.sort(key=lambda t: (-t[1], t[0]))
        return scored[:k]

    def topic_set_summary(self, topic_id: str, revision: int, label: str,
                          summary: str) -> bool:
        """Store a model-written label and summary, if the topic is still at `revision`
        (members joined since: kept, it still only describes surviving memories; one
        left: refused, the caller reads the topic again)."""
        with self._graph_write() as db:
            rows = db.rows("SELECT rev FROM topics WHERE id = ?", (topic_id,))
            if not rows or int(rows[0][0]) != int(revision):
                return False
            db.run("UPDATE topics SET label = ?, summary = ?, summary_by = 'model', "
                   "updated_at = ? WHERE id = ?", (label, summary, time.time(), topic_id))
            return True

    def topics_rebuild(self, cube_id: str, policy: TopicPolicy | None = None) -> int:
        """Cluster the cube's memories again from scratch, in arrival order (one
        transaction); returns the number of topics."""
        policy = policy or self.topic_policy or TopicPolicy()
        with self._graph_write() as db:
            if not db.lock_cube(cube_id):
                from memosys.errors import NotFoundError

                raise NotFoundError(f"no cube {cube_id!r}")
            for table in ("topic_terms", "topic_members", "topics"):
                db.run(f"DELETE FROM {table} WHERE cube_id = ?", (cube_id,))
            ids = [r[0] for r in db.rows(
                f"SELECT id FROM items WHERE cube_id = ? AND state <> 'deleted' "
                f"ORDER BY {db.order_col}", (cube_id,))]
            touched: set[str] = set()
            for chunk in _chunks(ids):
                stored = db.vectors(chunk)
                touched |= _join(db, cube_id, [(i, stored[i]) for i in chunk if i in stored],
                                 policy)
            touched = _split(db, cube_id, touched, policy)
            # keywords are ranked against the other topics: label them all at the end
            _refresh(db, cube_id, touched, policy, reset_model=touched)
            return int(db.rows("SELECT count(*) FROM topics WHERE cube_id = ?",
                               (cube_id,))[0][0])

    def topic_overview(self, cube_id: str, user: str | None = None, *, topics: int = 10,
                       entities: int = 10) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(topic id, members) and (entity id, memories mentioning it) ranked by how many
        memories (of `user`, if given: `source.user`) they hold."""
        with self._graph_read() as db:
            if user is None:
                t = db.rows("SELECT id, size FROM topics WHERE cube_id = ? ORDER BY size DESC,"
                            " id LIMIT ?", (cube_id, int(topics)))
                e = db.rows("SELECT id, mentions FROM graph_entities WHERE cube_id = ? ORDER BY"
                            " mentions DESC, id LIMIT ?", (cube_id, int(entities)))
            else:
                t = db.rows(
                    "SELECT m.topic_id, count(*) AS n FROM topic_members m JOIN items i ON "
                    "i.id = m.item_id WHERE m.cube_id = ? AND i.user_id = ? GROUP BY m.topic_id"
                    " ORDER BY n DESC, m.topic_id LIMIT ?", (cube_id, user, int(topics)))
                e = db.rows(
                    "SELECT g.entity_id, count(DISTINCT g.item_id) AS n FROM graph_mentions g "
                    "JOIN items i ON i.id = g.item_id WHERE g.cube_id = ? AND i.user_id = ? "
                    "GROUP BY g.entity_id ORDER BY n DESC, g.entity_id LIMIT ?",
                    (cube_id, user, int(entities)))
        return [(r[0], int(r[1])) for r in t], [(r[0], int(r[1])) for r in e]
