"""Graph writes in SQL for both backends: entity resolution (aliases, first names, short
forms, "my sister" placeholders), the edges a memory brings and takes away, and rebuilds.
Backends call `on_commit` / `on_purge` from inside their own write transactions, so an edit,
rollback, delete or purge changes the graph atomically with the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memosys.infra.vault.graph_base import (
    EntityRef,
    EntityType,
    GraphDeriver,
    entity_key,
)
from memosys.infra.vault.graph_sql import (
    _CHUNK,
    GraphDB,
    _chunks,
    _entity_id,
    _ts,
)
from memosys.types import MemoryItem, MemoryState, new_id


# --- writes --------------------------------------------------------------------------------
class _Resolver:
    """Name -> entity id within one cube for one batch, creating entities as needed."""

    def __init__(self, db: GraphDB, cube_id: str) -> None:
        self.db = db
        self.cube_id = cube_id
        self.cache: dict[str, str] = {}

    def lookup(self, key: str) -> str | None:
        if key in self.cache:
            return self.cache[key]
        # The entity created under this key, else one that has been called so (an alias).
        found = self.db.rows(
            "SELECT id FROM graph_entities WHERE cube_id = ? AND key = ? ORDER BY id LIMIT 1",
            (self.cube_id, key),
        ) or self.db.rows(
            "SELECT m.entity_id FROM graph_mentions m JOIN graph_entities e ON e.id = "
            "m.entity_id WHERE m.cube_id = ? AND m.key = ? ORDER BY m.entity_id LIMIT 1",
            (self.cube_id, key))
        if found:
            self.cache[key] = found[0][0]
            return found[0][0]
        return None

    def resolve(self, ref: EntityRef) -> str:
        key = ref.key
        if ref.role is not None and ref.owner is not None:
            owner_ref = EntityRef(ref.owner, EntityType.PERSON)
            owner = self.resolve(owner_ref)
            if not self.db.rows("SELECT 1 FROM graph_entities WHERE id = ?", (owner,)):
                # merged away or collected earlier in this batch: resolve the name afresh
                self.cache = {k: v for k, v in self.cache.items() if v != owner}
                owner = self.resolve(owner_ref)
            return self._role(owner, ref, key)
        found = self.lookup(key)
        if found is None and ref.type == EntityType.PERSON:
            found = self._by_first_name(key)
        if found is None:
            found = self._create(key, ref.name, ref.type)
            if ref.type == EntityType.PERSON and " " not in key and len(key) > 3:
                self._absorb_short_form(key, found)
        self.cache[key] = found
        return found

    def _absorb_short_form(self, key: str, new: str) -> None:
        """"Mel" was met before "Melanie": the short form's entity becomes the new one."""
        rows = self.db.rows(
            "SELECT id FROM graph_entities WHERE cube_id = ? AND type = 'person' AND role IS "
            "NULL AND key = head AND length(head) >= 3 AND length(head) < ? AND "
            "substr(?, 1, length(head)) = head AND id <> ? LIMIT 2",
            (self.cube_id, len(key), key, new))
        if len(rows) == 1:
            merge_entity(self.db, rows[0][0], new)
            for k, value in list(self.cache.items()):
                if value == rows[0][0]:
                    self.cache[k] = new

    def _by_first_name(self, key: str) -> str | None:
        """"Melanie" and "Melanie Smith" are one person when the cube knows one such."""
        words = key.split()
        if len(words) > 1:
            return self.lookup(words[0]) if self._is_person(self.lookup(words[0])) else None
        rows = self.db.rows(
            "SELECT id FROM graph_entities WHERE cube_id = ? AND head = ? AND key <> head "
            "AND type = 'person' LIMIT 2", (self.cube_id, key))
        if not rows and len(key) >= 3:
            # a short form of one known first name: "Mel" for Melanie, "Caro" for Caroline
            rows = self.db.rows(
                "SELECT DISTINCT head FROM graph_entities WHERE cube_id = ? AND type = 'person'"
                " AND role IS NULL AND length(head) > ? AND substr(head, 1, ?) = ? LIMIT 2",
                (self.cube_id, len(key), len(key), key))
            if len(rows) == 1:
                return self.lookup(rows[0][0])
        return rows[0][0] if len(rows) == 1 else None

    def _is_person(self, entity_id: str | None) -> bool:
        if entity_id is None:
            return False
        rows = self.db.rows("SELECT type FROM graph_entities WHERE id = ?", (entity_id,))
        return bool(rows) and rows[0][0] == EntityType.PERSON.value

    def _role(self, owner: str, ref: EntityRef, key: str) -> str:
        cache_key = f"\x00role:{owner}:{ref.role}"
        if cache_key in self.cache:
            return self.cache[cache_key]
        named = self.db.rows(
            "SELECT object_id FROM graph_relations WHERE cube_id = ? AND subject_id = ? "
            "AND predicate = ? AND valid_to IS NULL ORDER BY valid_from DESC, id DESC LIMIT 1",
            (self.cube_id, owner, ref.role),
        )
        if named:
            found = named[0][0]
        else:
            holder = self.db.rows(
                "SELECT id FROM graph_entities WHERE cube_id = ? AND owner_id = ? AND role = ? "
                "ORDER BY id LIMIT 1", (self.cube_id, owner, ref.role))
            if holder:
                found = holder[0][0]
            else:
                owner_name = self.db.rows(
                    "SELECT name FROM graph_entities WHERE id = ?", (owner,))[0][0]
                found = self._create(key, f"{owner_name}'s {ref.role}", ref.type,
                                     owner=owner, role=ref.role)
        self.cache[cache_key] = found
        return found

    def _create(self, key: str, name: str, etype: EntityType, *, owner: str | None = None,
                role: str | None = None) -> str:
        salt = 0
        while True:
            eid = _entity_id(self.cube_id, key, salt)
            if not self.db.rows("SELECT 1 FROM graph_entities WHERE id = ?", (eid,)):
                break
            salt += 1
        self.db.run(
            "INSERT INTO graph_entities (id, cube_id, name, key, head, type, owner_id, role, "
            "mentions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (eid, self.cube_id, name, key, key.split()[0], etype.value, owner, role),
        )
        return eid

    def merge_placeholder(self, owner: str, role: str, target: str) -> bool:
        """The conversation said who `owner`'s `role` is: the placeholder entity becomes
        that entity (its mentions and relations move over)."""
        rows = self.db.rows(
            "SELECT id FROM graph_entities WHERE cube_id = ? AND owner_id = ? AND role = ? "
            "AND id <> ?", (self.cube_id, owner, role, target))
        for (placeholder,) in rows:
            merge_entity(self.db, placeholder, target)
            for key, value in list(self.cache.items()):
                if value == placeholder:
                    self.cache[key] = target
        return bool(rows)


def merge_entity(db: GraphDB, source: str, target: str) -> None:
    db.run("DELETE FROM graph_mentions WHERE entity_id = ? AND EXISTS (SELECT 1 FROM "
           "graph_mentions t WHERE t.entity_id = ? AND t.item_id = graph_mentions.item_id "
           "AND t.key = graph_mentions.key)", (source, target))
    db.run("UPDATE graph_mentions SET entity_id = ? WHERE entity_id = ?", (target, source))
    db.run("UPDATE graph_relations SET subject_id = ? WHERE subject_id = ?", (target, source))
    db.run("UPDATE graph_relations SET object_id = ? WHERE object_id = ?", (target, source))
    db.run("UPDATE graph_entities SET owner_id = ? WHERE owner_id = ?", (target, source))
    db.run("DELETE FROM graph_entities WHERE id = ?", (source,))
    _recount(db, [target])


def _recount(db: GraphDB, entity_ids: Sequence[str]) -> None:
    for chunk in _chunks(sorted(set(entity_ids))):
        where, params = db.any_of("id", chunk)
        db.run(
            "UPDATE graph_entities SET mentions = (SELECT count(DISTINCT m.item_id) FROM "
            f"graph_mentions m WHERE m.entity_id = graph_entities.id) WHERE {where}", params)


def _remove_content(db: GraphDB, ids: Sequence[str]) -> tuple[set[str], set[tuple[str, str, str]]]:
    """Drop MENTIONS and RELATION edges of these memories; returns the entities that lost
    mentions and the (cube, subject, predicate) groups that lost relations."""
    entities: set[str] = set()
    groups: set[tuple[str, str, str]] = set()
    for chunk in _chunks(ids):
        where, params = db.any_of("item_id", chunk)
        entities.update(r[0] for r in db.rows(
            f"SELECT DISTINCT entity_id FROM graph_mentions WHERE {where}", params))
        groups.update((r[0], r[1], r[2]) for r in db.rows(
            f"SELECT DISTINCT cube_id, subject_id, predicate FROM graph_relations WHERE {where}",
            params))
        db.run(f"DELETE FROM graph_mentions WHERE {where}", params)
        db.run(f"DELETE FROM graph_relations WHERE {where}", params)
    return entities, groups


def _tidy_entities(db: GraphDB, entity_ids: set[str]) -> None:
    """Entities that lost mentions: recount, drop those nobody mentions any more, and take
    the name again from the surviving mentions (so no name outlives the memories that
    used it). Placeholders keep their name: it is made of their owner's name and role."""
    if not entity_ids:
        return
    _recount(db, list(entity_ids))
    for chunk in _chunks(sorted(entity_ids)):
        where, params = db.any_of("id", chunk)
        gone = [r[0] for r in db.rows(
            f"SELECT id FROM graph_entities WHERE {where} AND mentions = 0", params)]
        for dead in _chunks(gone):
            w1, p1 = db.any_of("subject_id", dead)
            w2, p2 = db.any_of("object_id", dead)
            db.run(f"DELETE FROM graph_relations WHERE {w1} OR {w2}", [*p1, *p2])
            w3, p3 = db.any_of("owner_id", dead)
            db.run(f"UPDATE graph_entities SET owner_id = NULL WHERE {w3}", p3)
            w4, p4 = db.any_of("id", dead)
            db.run(f"DELETE FROM graph_entities WHERE {w4}", p4)
        alive = [r[0] for r in db.rows(
            f"SELECT id FROM graph_entities WHERE {where} AND role IS NULL", params)]
        for eid in alive:
            best = db.rows(
                "SELECT surface, count(*) AS n FROM graph_mentions WHERE entity_id = ? "
                "AND speaker = 0 GROUP BY surface ORDER BY n DESC, length(surface) DESC, "
                "surface LIMIT 1", (eid,)) or db.rows(
                "SELECT surface, count(*) AS n FROM graph_mentions WHERE entity_id = ? "
                "GROUP BY surface ORDER BY n DESC, surface LIMIT 1", (eid,))
            if best:
                db.run("UPDATE graph_entities SET name = ? WHERE id = ?", (best[0][0], eid))


def _revalidate(db: GraphDB, groups: set[tuple[str, str, str]]) -> None:
    """Functional predicates hold one object at a time: each statement is valid until the
    next statement (in event time) with another object, or its memory's own valid_to."""
    for cube_id, subject, predicate in sorted(groups):
        rows = db.rows(
            "SELECT id, object_id, valid_from, source_valid_to, functional FROM graph_relations "
            "WHERE cube_id = ? AND subject_id = ? AND predicate = ? ORDER BY valid_from, id",
            (cube_id, subject, predicate))
        updates: list[tuple[Any, ...]] = []
        for n, (rid, obj, _start, own_end, functional) in enumerate(rows):
            end = own_end
            if functional:
                for later in rows[n + 1 :]:
                    if later[1] != obj:
                        end = later[2] if end is None else min(end, later[2])
                        break
            updates.append((end, rid))
        if updates:
            db.many("UPDATE graph_relations SET valid_to = ? WHERE id = ?", updates)


def on_commit(db: GraphDB, cube_id: str, items: Sequence[tuple[MemoryItem, bool]],
              deriver: GraphDeriver | None) -> None:
    """Bring the edges of freshly written memories up to date (inside the caller's
    transaction). `items`: (the stored item, whether this write created it)."""
    if not items:
        return
    ids = [item.id for item, _ in items]
    lost, groups = _remove_content(db, ids)
    for chunk in _chunks(ids):
        where, params = db.any_of("item_id", chunk)
        db.run(f"DELETE FROM graph_derived WHERE {where}", params)
    follows: list[tuple[Any, ...]] = []
    derived: list[tuple[Any, ...]] = []
    for item, created in items:
        if created and item.source.session is not None:
            prev = db.rows(
                f"SELECT id FROM items WHERE cube_id = ? AND session_id = ? AND {db.order_col}"
                f" < (SELECT {db.order_col} FROM items WHERE id = ?) ORDER BY {db.order_col} "
                "DESC LIMIT 1", (cube_id, item.source.session, item.id))
            if prev:
                follows.append((item.id, prev[0][0], cube_id))
        derived.extend((item.id, src, cube_id) for src in dict.fromkeys(item.derived_from)
                       if src != item.id)
    if follows:
        db.many("INSERT INTO graph_follows (item_id, prev_id, cube_id) VALUES (?, ?, ?) "
                "ON CONFLICT (item_id) DO UPDATE SET prev_id = excluded.prev_id", follows)
    if derived:
        db.many("INSERT INTO graph_derived (item_id, source_id, cube_id) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING", derived)
    if deriver is not None:
        added, dirty, new_groups = _add_content(db, cube_id, items, deriver)
        groups |= new_groups
        # The batch's memories had no mentions left (removed above): each new one counts.
        bumps = [(len(ids), eid) for eid, ids in added.items()
                 if eid not in lost and eid not in dirty]
        if bumps:
            db.many("UPDATE graph_entities SET mentions = mentions + ? WHERE id = ?", bumps)
        _recount(db, list(dirty - lost))
    _tidy_entities(db, lost)
    _revalidate(db, groups)


def _add_content(db: GraphDB, cube_id: str, items: Sequence[tuple[MemoryItem, bool]],
                 deriver: GraphDeriver
                 ) -> tuple[dict[str, set[str]], set[str], set[tuple[str, str, str]]]:
    """Mentions and relations of the active memories; returns the memories now
    mentioning each entity, the entities that must be recounted (merge targets), and the
    relation groups touched."""
    resolver = _Resolver(db, cube_id)
    touched: dict[str, set[str]] = {}
    dirty: set[str] = set()
    groups: set[tuple[str, str, str]] = set()
    for item, _ in items:
        if item.state == MemoryState.DELETED:
            continue  # invalidated/superseded memories stay as history (closed by valid_to)
        graph = deriver(item)
        ids: dict[str, str] = {}
        mentions: dict[tuple[str, str], tuple[Any, ...]] = {}
        # owners before the relative references that name them
        for ref in sorted(graph.entities, key=lambda r: r.role is not None):
            if not ref.key:
                continue
            if ref.weak:
                found = resolver.lookup(ref.key)
                if found is None:
                    continue
                eid = found
            else:
                eid = resolver.resolve(ref)
            ids[ref.key] = eid
            surface = ref.name if ref.role is None else f"{ref.owner}'s {ref.role}"
            mkey = (eid, ref.key)
            if mkey not in mentions or not ref.speaker:
                mentions[mkey] = (cube_id, item.id, item.version, eid, surface, ref.key,
                                  int(ref.speaker))
            # later mentions in this batch must resolve the same way
            resolver.cache[ref.key] = eid
        if mentions:
            db.many(
                "INSERT INTO graph_mentions (cube_id, item_id, item_version, entity_id, surface,"
                " key, speaker) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                list(mentions.values()))
            for eid, _ in mentions:
                touched.setdefault(eid, set()).add(item.id)
        rows = []
        for rel in graph.relations:
            subject = ids.get(entity_key(rel.subject))
            obj = ids.get(entity_key(rel.object))
            if subject is None or obj is None or subject == obj:
                continue
            rows.append((new_id(), cube_id, subject, rel.predicate, obj,
                         item.event_time.timestamp(), _ts(item.valid_to), _ts(item.valid_to),
                         float(rel.confidence), int(rel.functional), item.id, item.version))
            groups.add((cube_id, subject, rel.predicate))
            if resolver.merge_placeholder(subject, rel.predicate, obj):
                dirty.add(obj)  # recounted after the batch
        if rows:
            db.many(
                "INSERT INTO graph_relations (id, cube_id, subject_id, predicate, object_id, "
                "valid_from, valid_to, source_valid_to, confidence, functional, item_id, "
                "item_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    for gone in [e for e in touched if e not in dirty and not db.rows(
            "SELECT 1 FROM graph_entities WHERE id = ?", (e,))]:
        del touched[gone]  # merged away
    return touched, dirty, groups


def on_purge(db: GraphDB, ids: Sequence[str]) -> None:
    """Erase every edge of purged memories (inside the purge transaction); FOLLOWS closes
    the gap (the next memory now follows the one before the purged one)."""
    if not ids:
        return
    lost, groups = _remove_content(db, ids)
    for item_id in ids:
        prev = db.rows("SELECT prev_id FROM graph_follows WHERE item_id = ?", (item_id,))
        db.run("DELETE FROM graph_follows WHERE item_id = ?", (item_id,))
        if prev:
            db.run("UPDATE graph_follows SET prev_id = ? WHERE prev_id = ?", (prev[0][0], item_id))
        else:
            db.run("DELETE FROM graph_follows WHERE prev_id = ?", (item_id,))
    for chunk in _chunks(ids):
        w1, p1 = db.any_of("item_id", chunk)
        w2, p2 = db.any_of("source_id", chunk)
        db.run(f"DELETE FROM graph_derived WHERE {w1} OR {w2}", [*p1, *p2])
    _tidy_entities(db, lost)
    _revalidate(db, groups)


def clear_cube(db: GraphDB, cube_id: str) -> None:
    for table in ("graph_mentions", "graph_relations", "graph_follows", "graph_derived",
                  "graph_entities"):
        db.run(f"DELETE FROM {table} WHERE cube_id = ?", (cube_id,))


def rebuild(db: GraphDB, cube_id: str, deriver: GraphDeriver | None) -> None:
    clear_cube(db, cube_id)
    last = 0  # arrival order starts at 1 on both backends
    while True:
        rows = db.rows(
            f"SELECT {db.order_col}, doc FROM items WHERE cube_id = ? AND {db.order_col} > ? "
            f"ORDER BY {db.order_col} LIMIT {_CHUNK}", (cube_id, last))
        if not rows:
            return
        last = rows[-1][0]
        on_commit(db, cube_id, [(MemoryItem.model_validate_json(doc), True)
                                for _, doc in rows], deriver)


