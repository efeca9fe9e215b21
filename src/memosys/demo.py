"""`make demo`: the main job on the embedded defaults (local embeddings, SQLite), no network."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from memosys.system import MemOS

_CONVERSATION = [
    ("Alice", "Hi! I'm Alice. I just moved to Lisbon for a job at a robotics startup."),
    ("assistant", "Welcome to Lisbon! What will you work on?"),
    ("Alice", "Motion planning for warehouse robots. Please always answer me in short "
              "bullet points."),
    ("Alice", "I'm vegetarian, so suggest restaurants without meat."),
    ("assistant", "Noted: vegetarian, short bullet points."),
    ("Alice", "My sister Maria visits in June; she loves fado music."),
]


def run_demo(home: Path | None, out: Console) -> None:
    home = home or Path(tempfile.mkdtemp(prefix="memosys-demo-"))
    out.rule("memosys demo")
    out.print(f"installation home: {home}  (SQLite file {home / 'memosys.db'})")
    with MemOS.open(home) as mos:
        cube = mos.ensure_cube("alice", owner="alice")
        out.print(f"cube [bold]{cube.name}[/bold] bound to embedder {cube.config.embedder_id} "
                  f"(dim {cube.config.embedding_dim})")

        when = datetime(2026, 5, 8, 14, 0, tzinfo=UTC)
        messages = [{"role": "assistant" if who == "assistant" else "user",
                     "name": None if who == "assistant" else who,
                     "content": text, "id": f"m{i}", "timestamp": when}
                    for i, (who, text) in enumerate(_CONVERSATION)]
        episodes = mos.add("alice", messages=messages, user="alice", session="s1")
        pref = mos.add("alice", "Alice prefers tea over coffee.", memory_type="preference",
                       user="alice", tags=["food"])[0]
        out.print(f"added {len(episodes)} chat messages as episode memories and 1 preference")

        for query in ("where does Alice live?", "what food should I recommend?",
                      "who is coming to visit?"):
            _show(out, query, mos.search(query, "alice", top_k=3))

        snap = mos.snapshot("alice", "before edits")
        out.rule("update, history, rollback")
        updated = mos.update(pref.id, text="Alice prefers green tea, never coffee.")
        out.print(f"updated preference -> version {updated.version}: {updated.text}")
        for record in mos.history(pref.id):
            out.print(f"  v{record.item.version} ({record.op}) {record.item.text}")
        restored = mos.rollback(pref.id, 1)
        out.print(f"rolled back to v1 content as version {restored.version}: {restored.text}")

        out.rule("delete and cube rollback")
        mos.delete(episodes[5].id)
        mos.add("alice", "Alice's favourite colour is teal.", user="alice")
        _show(out, "who is coming to visit?", mos.search("who is coming to visit?", "alice",
                                                          top_k=2))
        changed = mos.rollback_cube("alice", snap)
        out.print(f"rolled the cube back to snapshot '{snap.label}': {len(changed)} memories "
                  "restored to their state then")
        _show(out, "who is coming to visit?", mos.search("who is coming to visit?", "alice",
                                                          top_k=2))
        stats = mos.stats("alice")["cubes"][0]
        out.print(f"cube now holds {stats['items']} memories, by state {stats['by_state']}")
    out.rule("done")


def _show(out: Console, query: str, hits: list) -> None:  # type: ignore[type-arg]
    table = Table(title=f"search: {query}")
    for col in ("score", "bm25 rank", "vector rank", "type", "text"):
        table.add_column(col, overflow="fold")
    for h in hits:
        table.add_row(f"{h.score:.4f}", str(h.ranks.get("bm25", "-")),
                      str(h.ranks.get("vector", "-")), h.item.memory_type.value, h.item.text)
    out.print(table)
