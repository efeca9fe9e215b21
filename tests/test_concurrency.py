"""Concurrent writers on one SQLite file: threads in one process and two processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import memosys
from memosys.config import Settings
from memosys.errors import ConflictError
from memosys.system import MemOS

_SRC = str(Path(memosys.__file__).resolve().parents[1])


def _run_threads(target, count: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_add_update_and_search_without_loss(mos: MemOS) -> None:
    mos.create_cube("c")
    [shared] = mos.add("c", "shared counter memory")

    def work(n: int) -> None:
        for i in range(10):
            mos.add("c", f"thread {n} note {i} about gardening")
            mos.update(shared.id, text=f"shared counter memory, written by {n} round {i}")
            assert mos.search("gardening", "c", top_k=3)

    assert _run_threads(work, 4) == []
    items = mos.list("c", limit=1000)
    assert len(items) == 41
    assert len({i.id for i in items}) == 41
    assert sorted(i.text for i in items if i.id != shared.id) == sorted(
        f"thread {n} note {i} about gardening" for n in range(4) for i in range(10))
    history = mos.history(shared.id)
    assert [r.item.version for r in history] == list(range(1, 42))
    assert mos.get(shared.id).version == 41
    assert mos.get_cube("c").clock == 1 + 40 + 40


def test_optimistic_update_lets_exactly_one_writer_win(mos: MemOS) -> None:
    mos.create_cube("c")
    [item] = mos.add("c", "contested")
    outcomes: list[str] = []

    def work(n: int) -> None:
        try:
            mos.update(item.id, text=f"winner {n}", expected_version=1)
            outcomes.append("won")
        except ConflictError:
            outcomes.append("lost")

    assert _run_threads(work, 6) == []
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    assert mos.get(item.id).version == 2


_WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from memosys.config import Settings
    from memosys.system import MemOS
    tag, shared_id = sys.argv[1], sys.argv[2]
    with MemOS(Settings.load({home!r})) as mos:
        for i in range(40):
            mos.add("c", f"process {{tag}} memory {{i}}")
            if i % 4 == 0:
                mos.update(shared_id, text=f"shared, last written by {{tag}} at {{i}}")
        print("done", tag)
""")


def test_two_processes_on_one_file(home: Path, embedder) -> None:
    with MemOS(Settings.load(home), embedder=embedder) as mos:
        mos.create_cube("c")
        [shared] = mos.add("c", "shared between processes")
    script = _WORKER.format(src=_SRC, home=str(home))
    procs = [subprocess.Popen([sys.executable, "-c", script, tag, shared.id],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("A", "B")]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert stdout.startswith("done")
    with MemOS(Settings.load(home), embedder=embedder) as mos:
        items = mos.list("c", limit=1000)
        texts = sorted(i.text for i in items if i.id != shared.id)
        assert texts == sorted(f"process {t} memory {i}" for t in "AB" for i in range(40))
        assert len({i.id for i in items}) == 81
        assert [r.item.version for r in mos.history(shared.id)] == list(range(1, 22))
        # this process's vector index sees the other processes' writes
        hit = mos.search("process B memory 39", "c", top_k=1)[0]
        assert hit.item.text == "process B memory 39"
        assert "vector" in hit.ranks
