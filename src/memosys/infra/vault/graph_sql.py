"""The graph store in SQL that both backends run: one implementation of reads and recursive
traversal here, of writes and entity resolution in `graph_writes.py`, so SQLite and
PostgreSQL cannot drift apart.

Backends provide a `GraphDB` (how to run a statement on their connection, their
placeholder style and their arrival-order column) and call `on_commit` / `on_purge` from
inside their own write transactions. Times are stored as epoch seconds (double precision)
so the SQL is the same on both.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from memosys.errors import ValidationError
from memosys.infra.vault.graph_base import (
    Entity,
    EntityType,
    GraphStats,
    GraphStore,
    Neighbour,
    Relation,
    entity_key,
)

MAX_HOPS = 4
HUB_DEGREE = 50
"""Default degree cut-off of walks: an entity with more RELATION edges than this (in a
chat, the speakers; in a big cube, every popular place) is reached but not walked
through, so two hops stay a neighbourhood rather than the whole graph."""
_CHUNK = 500


class GraphDB(ABC):
    """One connection inside (or outside) a transaction, in `?` placeholder style."""

    order_col: str
    """The items column that gives arrival order ("rowid" in SQLite, "seq" in PostgreSQL)."""

    @abstractmethod
    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def run(self, query: str, params: Sequence[Any] = ()) -> None: ...

    @abstractmethod
    def many(self, query: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """`column IN (...)` for at most 500 values, in this dialect."""

    @abstractmethod
    def vectors(self, ids: Sequence[str]) -> dict[str, Any]:
        """The stored embeddings of these memories (numpy float32), for the topic index."""

    def lock_cube(self, cube_id: str) -> bool:
        """Serialise with the cube's writers (SQLite's write lock already does); False if
        there is no such cube."""
        return bool(self.rows("SELECT 1 FROM cubes WHERE id = ?", (cube_id,)))


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _entity_id(cube_id: str, key: str, salt: int = 0) -> str:
    """Deterministic, so a rebuild gives every entity the id it had."""
    raw = f"{cube_id}\x00{key}\x00{salt}".encode()
    return "e" + hashlib.sha1(raw).hexdigest()[:23]


_ENTITY_COLS = "e.id, e.cube_id, e.name, e.type, e.mentions, e.owner_id, e.role"


def _entity(row: Sequence[Any], aliases: tuple[str, ...] = ()) -> Entity:
    eid, cube_id, name, etype, mentions, owner_id, role = row[:7]
    return Entity(eid, cube_id, name, EntityType(etype), int(mentions or 0), aliases,
                  owner_id, role)


# --- reads ---------------------------------------------------------------------------------
class SQLGraph(GraphStore):
    """The read side of `GraphStore` over a backend's `GraphDB` (mixed into the vaults)."""

    @abstractmethod
    def _graph_read(self) -> AbstractContextManager[GraphDB]: ...

    @abstractmethod
    def _graph_write(self) -> AbstractContextManager[GraphDB]: ...

    def graph_rebuild(self, cube_id: str) -> GraphStats:
        from memosys.infra.vault.graph_writes import rebuild  # writes build on this module

        with self._graph_write() as db:
            if not db.lock_cube(cube_id):
                from memosys.errors import NotFoundError

                raise NotFoundError(f"no cube {cube_id!r}")
            rebuild(db, cube_id, self.graph_deriver)
        return self.graph_stats(cube_id)

    def _aliases(self, db: GraphDB, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for chunk in _chunks(ids):
            where, params = db.any_of("entity_id", chunk)
            for eid, surface in db.rows(
                    f"SELECT DISTINCT entity_id, surface FROM graph_mentions WHERE {where} "
                    "ORDER BY entity_id, surface", params):
                out.setdefault(eid, []).append(surface)
        return {k: tuple(v) for k, v in out.items()}

    def _entities(self, db: GraphDB, ids: Sequence[str]) -> dict[str, Entity]:
        out: dict[str, Entity] = {}
        wanted = list(dict.fromkeys(ids))
        aliases = self._aliases(db, wanted)
        for chunk in _chunks(wanted):
            where, params = db.any_of("e.id", chunk)
            for row in db.rows(f"SELECT {_ENTITY_COLS} FROM graph_entities e WHERE {where}",
                               params):
                out[row[0]] = _entity(row, aliases.get(row[0], ()))
        return out

    def graph_entities(self, cube_id: str, *, prefix: str | None = None,
                       type: EntityType | None = None, limit: int = 50) -> list[Entity]:
        clauses, params = ["e.cube_id = ?"], [cube_id]
        if type is not None:
            clauses.append("e.type = ?")
            params.append(EntityType(type).value)
        if prefix:
            like = entity_key(prefix).replace("%", "").replace("_", "") + "%"
            clauses.append("(lower(e.name) LIKE ? OR EXISTS (SELECT 1 FROM graph_mentions m "
                           "WHERE m.entity_id = e.id AND m.key LIKE ?))")
            params.extend([like, like])
        with self._graph_read() as db:
            rows = db.rows(f"SELECT {_ENTITY_COLS} FROM graph_entities e WHERE "
                           f"{' AND '.join(clauses)} ORDER BY e.mentions DESC, e.name, e.id "
                           "LIMIT ?", (*params, int(limit)))
            aliases = self._aliases(db, [r[0] for r in rows])
        return [_entity(r, aliases.get(r[0], ())) for r in rows]

    def graph_find(self, cube_id: str, names: list[str]) -> dict[str, Entity]:
        keys = {n: entity_key(n) for n in names if n and n.strip()}
        with self._graph_read() as db:
            best: dict[str, str] = {}
            wanted = sorted(set(keys.values()))
            for chunk in _chunks(wanted):
                where, params = db.any_of("key", chunk)
                for key, eid in db.rows(
                        f"SELECT key, id FROM graph_entities WHERE cube_id = ? AND {where} "
                        "ORDER BY id DESC", (cube_id, *params)):
                    best[key] = eid  # descending: the smallest id is written last
            # the rest by alias: the entity most often called so
            for chunk in _chunks([k for k in wanted if k not in best]):
                where, params = db.any_of("key", chunk)
                for key, eid, _n in db.rows(
                        "SELECT key, entity_id, count(*) AS n FROM graph_mentions WHERE "
                        f"cube_id = ? AND {where} GROUP BY key, entity_id ORDER BY n ASC, "
                        "entity_id DESC", (cube_id, *params)):
                    best[key] = eid  # ascending: the most-mentioned entity is written last
            by_id = [n for n in names if n.startswith("e") and len(n) == 24]
            if by_id:
                for chunk in _chunks(by_id):
                    where, params = db.any_of("id", chunk)
                    for (eid,) in db.rows(f"SELECT id FROM graph_entities WHERE cube_id = ? "
                                          f"AND {where}", (cube_id, *params)):
                        best[eid] = eid
                        keys[eid] = eid
            entities = self._entities(db, list(best.values()))
        return {n: entities[best[k]] for n, k in keys.items()
                if k in best and best[k] in entities}

    def graph_role(self, cube_id: str, owner_id: str, role: str) -> Entity | None:
        with self._graph_read() as db:
            rows = db.rows(
                "SELECT object_id FROM graph_relations WHERE cube_id = ? AND subject_id = ? AND"
                " predicate = ? AND valid_to IS NULL ORDER BY valid_from DESC, id DESC LIMIT 1",
                (cube_id, owner_id, role)) or db.rows(
                "SELECT id FROM graph_entities WHERE cube_id = ? AND owner_id = ? AND role = ? "
                "ORDER BY id LIMIT 1", (cube_id, owner_id, role))
            return self._entities(db, [rows[0][0]]).get(rows[0][0]) if rows else None

    def graph_relations(self, cube_id: str, entity_id: str | None = None, *,
                        as_of: datetime | None = None,
                        predicate: str | None = None) -> list[Relation]:
        clauses, params = ["r.cube_id = ?"], [cube_id]
        if entity_id is not None:
            # two indexed arms (the cube checked inside them): with an OR, or with the
            # cube's own index on offer, SQLite's planner scans the cube's relations
            clauses = ["r.id IN (SELECT id FROM graph_relations WHERE subject_id = ? AND "
                       "cube_id = ? UNION ALL SELECT id FROM graph_relations WHERE "
                       "object_id = ? AND cube_id = ?)"]
            params = [entity_id, cube_id, entity_id, cube_id]
        if predicate is not None:
            clauses.append("r.predicate = ?")
            params.append(predicate)
        if as_of is not None:
            at = as_of.timestamp()
            clauses.append("r.valid_from <= ? AND (r.valid_to IS NULL OR r.valid_to > ?)")
            params.extend([at, at])
        with self._graph_read() as db:
            rows = db.rows(
                "SELECT r.subject_id, r.predicate, r.object_id, r.valid_from, r.valid_to, "
                "r.confidence, r.item_id, r.item_version, r.functional FROM graph_relations r "
                f"WHERE {' AND '.join(clauses)} ORDER BY r.valid_from, r.id", params)
            entities = self._entities(db, [r[0] for r in rows] + [r[2] for r in rows])
        # One Relation per statement run: the same triple over the same validity, however
        # many memories state it.
        merged: dict[tuple[Any, ...], list[Any]] = {}
        for s, p, o, start, end, conf, item_id, version, functional in rows:
            key = (s, p, o, end)
            if key not in merged:
                merged[key] = [start, conf, [], functional]
            entry = merged[key]
            entry[1] = max(entry[1], conf)
            if (item_id, version) not in entry[2]:
                entry[2].append((item_id, version))
        out = []
        for (s, p, o, end), (start, conf, sources, functional) in merged.items():
            if s in entities and o in entities:
                out.append(Relation(entities[s], p, entities[o], _dt(start), _dt(end),
                                    float(conf), tuple(sources), bool(functional)))
        out.sort(key=lambda r: (r.valid_from or datetime.min.replace(tzinfo=UTC),
                                r.predicate, r.object.name))
        return out

    @staticmethod
    def _walk(db: GraphDB, cube_id: str, start: str, hops: int,
              max_degree: int | None = None) -> dict[str, int]:
        """Hop distance of every entity within `hops` RELATION edges (either direction),
        by a recursive query; (entity, hops) pairs are kept once, and entities of more
        than `max_degree` edges (hubs) are reached but not walked through (the start
        always is), so the walk stays bounded. Entity ids belong to one cube, so the
        joins go by the subject and object indexes alone."""
        cut, params = "", [start, cube_id, int(hops)]
        if max_degree is not None:
            cut = (" AND (walk.hops = 0 OR (SELECT count(*) FROM graph_relations h WHERE "
                   "h.subject_id = walk.id) + (SELECT count(*) FROM graph_relations h WHERE "
                   "h.object_id = walk.id) <= ?)")
            params.append(int(max_degree))
        rows = db.rows(
            "WITH RECURSIVE walk(id, hops) AS ("
            " SELECT id, 0 FROM graph_entities WHERE id = ? AND cube_id = ?"
            " UNION"
            " SELECT CASE WHEN r.subject_id = walk.id THEN r.object_id ELSE r.subject_id END,"
            " walk.hops + 1 FROM walk JOIN graph_relations r"
            " ON r.subject_id = walk.id OR r.object_id = walk.id"
            f" WHERE walk.hops < ?{cut})"
            " SELECT id, min(hops) FROM walk GROUP BY id", params)
        return {eid: int(n) for eid, n in rows}

    def graph_degrees(self, cube_id: str, entity_ids: Sequence[str]) -> dict[str, int]:
        """RELATION edges (either direction) of each entity."""
        with self._graph_read() as db:
            return self._degrees(db, entity_ids)

    @staticmethod
    def _degrees(db: GraphDB, entity_ids: Sequence[str]) -> dict[str, int]:
        out = {eid: 0 for eid in entity_ids}
        for chunk in _chunks(sorted(set(entity_ids))):
            w1, p1 = db.any_of("subject_id", chunk)
            w2, p2 = db.any_of("object_id", chunk)
            for eid, n in db.rows(
                    f"SELECT x, count(*) FROM (SELECT subject_id AS x FROM graph_relations "
                    f"WHERE {w1} UNION ALL SELECT object_id AS x FROM "
                    f"graph_relations WHERE {w2}) d GROUP BY x", (*p1, *p2)):
                out[eid] = int(n)
        return out

    @staticmethod
    def _edges_of(db: GraphDB, cube_id: str, ids: Sequence[str]
                  ) -> list[tuple[str, str, str, float]]:
        # Entity ids belong to one cube; each arm uses its own index (subject, object).
        found: dict[str, tuple[str, str, str, float]] = {}
        for chunk in _chunks(sorted(ids)):
            for column in ("subject_id", "object_id"):
                where, params = db.any_of(column, chunk)
                for r in db.rows("SELECT id, subject_id, predicate, object_id, confidence "
                                 f"FROM graph_relations WHERE {where}", params):
                    found[r[0]] = (r[1], r[2], r[3], float(r[4]))
        return [found[k] for k in sorted(found)]

    def graph_neighbours(self, cube_id: str, entity_id: str, *, hops: int = 1,
                         limit: int = 50, co_mentions: bool = True,
                         max_degree: int | None = HUB_DEGREE) -> list[Neighbour]:
        if not 1 <= hops <= MAX_HOPS:
            raise ValidationError(f"hops must be between 1 and {MAX_HOPS}, got {hops}")
        if max_degree is not None and max_degree < 1:
            raise ValidationError("max_degree must be at least 1 (or None: no cut-off)")
        best: dict[str, tuple[int, float, str]] = {}
        with self._graph_read() as db:
            dist = self._walk(db, cube_id, entity_id, hops, max_degree)
            weight = {entity_id: 1.0}
            for layer in range(1, hops + 1):
                nodes = [e for e, n in dist.items() if n == layer]
                if not nodes:
                    break
                at_layer = set(nodes)
                # the edges of the layer before (hubs there were not walked through): a
                # bounded set, where the edges of this layer's hubs would not be
                walked = [e for e, n in dist.items() if n == layer - 1]
                if max_degree is not None and layer > 1:
                    degree = self._degrees(db, walked)
                    walked = [e for e in walked if degree[e] <= max_degree]
                for s, p, o, conf in self._edges_of(db, cube_id, walked):
                    for near, far in ((s, o), (o, s)):
                        if far in at_layer and dist.get(near) == layer - 1 and near in weight:
                            w = weight[near] * conf
                            if far not in best or w > best[far][1]:
                                best[far] = (layer, w, p)
                                weight[far] = w
            if co_mentions:
                # Co-mentioned entities are one hop away, weighted by how often.
                total = db.rows("SELECT mentions FROM graph_entities WHERE id = ?",
                                (entity_id,))
                denom = max(1, int(total[0][0])) if total else 1
                for eid, together in db.rows(
                        "SELECT m2.entity_id, count(DISTINCT m2.item_id) AS n FROM "
                        "graph_mentions m1 JOIN graph_mentions m2 ON m2.item_id = m1.item_id "
                        "WHERE m1.entity_id = ? AND m2.entity_id <> ? GROUP BY m2.entity_id "
                        "ORDER BY n DESC, m2.entity_id LIMIT ?",
                        (entity_id, entity_id, int(limit))):
                    old = best.get(eid)
                    if old is None or old[0] > 1:  # a relation at one hop says more
                        best[eid] = (1, min(1.0, together / denom), "co-mention")
            best.pop(entity_id, None)
            ranked = sorted(best.items(), key=lambda kv: (kv[1][0], -kv[1][1], kv[0]))[:limit]
            entities = self._entities(db, [eid for eid, _ in ranked])
        return [Neighbour(entities[eid], n, via, w) for eid, (n, w, via) in ranked
                if eid in entities]

    def graph_path(self, cube_id: str, source_id: str, target_id: str, *,
                   max_hops: int = MAX_HOPS, max_degree: int | None = None
                   ) -> list[tuple[Entity, str]] | None:
        if not 1 <= max_hops <= MAX_HOPS:
            raise ValidationError(f"max_hops must be between 1 and {MAX_HOPS}")
        with self._graph_read() as db:
            dist = self._walk(db, cube_id, source_id, max_hops, max_degree)
            if target_id not in dist:
                return None
            # Walk back from the target, one layer nearer the source each step (the most
            # confident edge, then the smallest id, so the answer is deterministic).
            steps: list[tuple[str, str]] = []
            here = target_id
            while dist[here] > 0:
                options = []
                for s, p, o, conf in self._edges_of(db, cube_id, [here]):
                    other = o if s == here else s
                    if dist.get(other) == dist[here] - 1:
                        options.append((-conf, other, p))
                _, prev, predicate = min(options)
                steps.append((here, predicate))
                here = prev
            steps.append((source_id, ""))
            steps.reverse()
            found = self._entities(db, [e for e, _ in steps])
        return [(found[e], p) for e, p in steps if e in found]

    def graph_mentioning(self, entity_ids: list[str], *, limit: int = 200
                         ) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        with self._graph_read() as db:
            for eid in dict.fromkeys(entity_ids):
                out[eid] = [r[0] for r in db.rows(
                    "SELECT DISTINCT item_id FROM graph_mentions WHERE entity_id = ? "
                    "ORDER BY item_id DESC LIMIT ?", (eid, int(limit)))]
        return out

    def graph_memory_entities(self, item_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        with self._graph_read() as db:
            for chunk in _chunks(list(dict.fromkeys(item_ids))):
                where, params = db.any_of("item_id", chunk)
                for item_id, eid in db.rows(
                        f"SELECT DISTINCT item_id, entity_id FROM graph_mentions WHERE {where} "
                        "ORDER BY item_id, entity_id", params):
                    out.setdefault(item_id, []).append(eid)
        return out

    def graph_follows(self, item_id: str) -> tuple[str | None, str | None]:
        with self._graph_read() as db:
            prev = db.rows("SELECT prev_id FROM graph_follows WHERE item_id = ?", (item_id,))
            nxt = db.rows("SELECT item_id FROM graph_follows WHERE prev_id = ? "
                          "ORDER BY item_id LIMIT 1", (item_id,))
        return (prev[0][0] if prev else None, nxt[0][0] if nxt else None)

    def graph_derived(self, item_id: str) -> tuple[list[str], list[str]]:
        with self._graph_read() as db:
            sources = [r[0] for r in db.rows(
                "SELECT source_id FROM graph_derived WHERE item_id = ? ORDER BY source_id",
                (item_id,))]
            derived = [r[0] for r in db.rows(
                "SELECT item_id FROM graph_derived WHERE source_id = ? ORDER BY item_id",
                (item_id,))]
        return sources, derived

    def graph_stats(self, cube_id: str) -> GraphStats:
        with self._graph_read() as db:
            counts = [int(db.rows(f"SELECT count(*) FROM {t} WHERE cube_id = ?",
                                  (cube_id,))[0][0])
                      for t in ("graph_entities", "graph_mentions", "graph_relations",
                                "graph_follows", "graph_derived")]
        return GraphStats(*counts)
