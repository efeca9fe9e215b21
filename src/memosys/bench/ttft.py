"""`memosys bench ttft`: time to first token with memories in the prompt vs in a KV cache.

For each memory prefix size (~0.5k, 1k, 2k, 4k tokens of background memories, rendered exactly
as the chat renders its stable set) the prefix is compiled into an activation cache of the local
SmolLM2 through the real :class:`~memosys.memories.activation.ActivationStore` (file + record in
a temporary cube). Then, for a short and a long user query:

- **prompt**: the whole prompt (memories + query) goes through the model; TTFT is the time from
  the call to the first streamed text;
- **KV**: the cache is taken from the store (warm: in memory; ``ttft_kv_disk_s``: read back
  from its file first), and only the query is prefilled on top of it;
- **identical**: the greedy answers (``--max-new-tokens``) of both paths are compared.

Each timing is the median of ``--repeats`` runs after one warm-up round, the three paths
interleaved so they share whatever load the machine has; a timed run stops at the first
token, and identity is checked on one full greedy answer per path. The reduction ratio is
the robust number on a shared machine.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from memosys.config import Settings
from memosys.memories.activation import ActivationStore, LoadedActivation, SourceRef
from memosys.models.local_llm import LocalLLM
from memosys.operation.prompt import DEFAULT_SYSTEM, stable_text
from memosys.operation.scheduler_worker import stable_levels
from memosys.system import MemOS
from memosys.types import MemoryItem

DEFAULT_SIZES = (512, 1024, 2048, 4096)

SHORT_QUERY = "Where does my sister live?"
LONG_QUERY = (
    "I am planning a long weekend with my family next month and I would like your help to "
    "organise it properly. We want to visit a city none of us has been to, stay somewhere "
    "quiet, eat at least one really good dinner, and spend one day outdoors if the weather "
    "allows it. My partner does not like long drives, our daughter gets bored in museums "
    "after an hour, and I would like to keep the budget reasonable without being stingy. "
    "We can leave on Friday afternoon and must be back home by Monday evening. Please think "
    "about everything you know about me and my family, then suggest a destination, where "
    "we should stay, and a rough plan for each day, and tell me what I should book first."
)

_PEOPLE = ["Mia", "Tom", "Ana", "Ravi", "Lena", "Omar", "Yuki", "Pablo", "Sara", "Ivan",
           "Nora", "Ken", "Eva", "Luis", "Hana", "Ben"]
_CITIES = ["Montreal", "Porto", "Kyoto", "Dublin", "Lima", "Oslo", "Cairo", "Perth", "Riga",
           "Quito", "Seoul", "Turin", "Accra", "Hanoi", "Bergen", "Cusco"]
_HOBBIES = ["rock climbing", "baking sourdough", "restoring bikes", "birdwatching",
            "playing the cello", "growing tomatoes", "sea kayaking", "knitting scarves"]


def background_texts() -> Iterator[str]:
    """Endless, varied, realistic user memories (deterministic)."""
    i = 0
    while True:
        person = _PEOPLE[i % len(_PEOPLE)]
        city = _CITIES[(i * 7) % len(_CITIES)]
        hobby = _HOBBIES[(i * 3) % len(_HOBBIES)]
        yield (f"The user's friend {person} ({i}) lives in {city}, loves {hobby} and meets "
               f"the user every {['Monday', 'Friday', 'weekend', 'month'][i % 4]}.")
        if i % 5 == 0:
            yield f"The user's sister lives in {city} and works as a {['pilot', 'nurse'][i % 2]}."
        i += 1


@dataclass
class Row:
    memory_tokens: int
    query_tokens: int
    ttft_prompt_s: float
    ttft_kv_s: float
    reduction: float
    build_s: float
    cache_bytes: int
    identical: bool
    ttft_kv_disk_s: float
    prompt_tokens: int
    query: str


def _ttft(start: Callable[[], Iterator[str]]) -> float:
    """Seconds from the call until the first text delta (the rest is not generated)."""
    began = time.perf_counter()
    run = start()
    next(iter(run), None)
    elapsed = time.perf_counter() - began
    close = getattr(run, "close", None)
    if close is not None:
        close()
    return elapsed


def _text(start: Callable[[], Iterator[str]]) -> str:
    return "".join(start())


def _fill(mos: MemOS, cube: str, llm: LocalLLM, target: int,
          texts: Iterator[str]) -> list[MemoryItem]:
    """Add background memories until the rendered stable prefix reaches ~target tokens."""
    items: list[MemoryItem] = []
    tokens = 0
    while tokens < target:
        batch = [next(texts) for _ in range(8)]
        items += mos.add_items(cube, [MemoryItem(cube_id="x", text=t) for t in batch])
        tokens = sum(len(level) for level in stable_levels(llm, DEFAULT_SYSTEM,
                                                           {"background": items}))
    while len(items) > 1:  # trim to the last memory under the target
        levels = stable_levels(llm, DEFAULT_SYSTEM, {"background": items[:-1]})
        if sum(len(level) for level in levels) < target:
            break
        items.pop()
    return items


def run_ttft_bench(
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    *,
    repeats: int = 3,
    max_new_tokens: int = 24,
    json_file: Path | None = None,
    out: Console | None = None,
    llm: LocalLLM | None = None,
    settings: Settings | None = None,
    threads: int | None = 1,
) -> list[Row]:
    """``threads``: torch CPU threads (1 by default: on a shared 2-core machine a second
    thread mostly waits for the first, and timings get noisy; None leaves torch's choice)."""
    import torch

    out = out or Console()
    if threads is not None:
        torch.set_num_threads(threads)
    settings = settings or Settings.load()
    if llm is None:
        from memosys.models.llm import make_llm

        made = make_llm("local", cache_dir=settings.llm_cache_dir, home=settings.home)
        assert isinstance(made, LocalLLM)
        llm = made
    llm.load()
    limit = llm.context_length - max_new_tokens - len(llm.tokenizer(LONG_QUERY)["input_ids"]) - 64
    usable = tuple(s for s in sizes if s <= limit)
    skipped = [s for s in sizes if s > limit]
    if skipped:
        out.print(f"[yellow]skipping sizes {skipped}: over the {llm.context_length}-token "
                  "context with the long query[/yellow]")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="memosys-ttft-") as tmp:
        mos = MemOS(Settings.load(Path(tmp), embedder=settings.embedder))
        try:
            mos.llm = llm
            store = ActivationStore(mos, llm, Path(tmp) / "activation", budget_mb=8192,
                                    memory_mb=4096)
            cube = mos.create_cube("bench").id
            texts = background_texts()
            for size in usable:
                with out.status(f"building a {size}-token memory prefix"):
                    items = _fill(mos, cube, llm, size, texts)
                    sections = {"background": items}
                    levels = stable_levels(llm, DEFAULT_SYSTEM, sections)
                    sources = [SourceRef(i.id, i.version) for i in items]
                    store.forget_loaded()
                    built = store.build(cube, [[t for lv in levels for t in lv]], sources)
                for query in (SHORT_QUERY, LONG_QUERY):
                    with out.status(f"{built.n_tokens}-token prefix, "
                                    f"{'short' if query == SHORT_QUERY else 'long'} query"):
                        rows.append(_measure(llm, store, built, sections, query, repeats,
                                             max_new_tokens))
                    _print_row(out, rows[-1])
                    if json_file is not None:  # after every row: a long run keeps its part
                        _write_json(json_file, rows, llm, repeats, max_new_tokens)
        finally:
            mos.close()
    _table(out, rows)
    if json_file is not None:
        out.print(f"wrote {json_file}")
    return rows


def _write_json(path: Path, rows: list[Row], llm: LocalLLM, repeats: int,
                max_new_tokens: int) -> None:
    import torch

    meta = {"model": llm.id, "threads": torch.get_num_threads(), "repeats": repeats,
            "max_new_tokens": max_new_tokens}
    path.write_text(json.dumps({"rows": [asdict(r) for r in rows], **meta}, indent=2) + "\n")


def _measure(llm: LocalLLM, store: ActivationStore, built: LoadedActivation,
             sections: dict[str, list[MemoryItem]], query: str, repeats: int,
             max_new_tokens: int) -> Row:
    messages = [{"role": "system", "content": stable_text(DEFAULT_SYSTEM, sections)},
                {"role": "user", "content": query}]
    full = llm.apply_chat_template(messages)
    n = built.n_tokens
    if full[:n] != built.token_ids:
        raise RuntimeError("the cached prefix is not a token prefix of the prompt")
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    cube, key = built.cube_id, built.header.key

    def prompt() -> Iterator[str]:
        return llm.stream(messages, **options)

    def kv_warm() -> Iterator[str]:
        loaded = store.get(cube, key)
        assert loaded is not None
        ids = llm.apply_chat_template(messages)
        return store.stream(loaded, ids[n:], **options)

    def kv_disk() -> Iterator[str]:
        store.forget_loaded()
        return kv_warm()

    # Interleaved, so that both paths see the same background load; the first round warms up.
    times: dict[str, list[float]] = {"prompt": [], "kv": [], "disk": []}
    for _ in range(repeats + 1):
        for name, start in (("prompt", prompt), ("disk", kv_disk), ("kv", kv_warm)):
            times[name].append(_ttft(start))
    t_prompt, t_kv, t_disk = (statistics.median(times[k][1:]) for k in ("prompt", "kv", "disk"))
    text_prompt = _text(prompt)
    identical = text_prompt == _text(kv_disk) == _text(kv_warm) and bool(text_prompt)
    return Row(
        memory_tokens=n, query_tokens=len(full) - n, ttft_prompt_s=round(t_prompt, 4),
        ttft_kv_s=round(t_kv, 4), reduction=round(1 - t_kv / t_prompt, 4),
        build_s=built.header.build_s, cache_bytes=built.header.bytes, identical=identical,
        ttft_kv_disk_s=round(t_disk, 4), prompt_tokens=len(full),
        query="short" if query == SHORT_QUERY else "long",
    )


def _print_row(out: Console, r: Row) -> None:
    out.print(f"  {r.memory_tokens} memory tokens, {r.query} query: prompt {r.ttft_prompt_s:.3f}s"
              f", KV {r.ttft_kv_s:.3f}s ({r.reduction:.1%} less), identical={r.identical}")


def _table(out: Console, rows: list[Row]) -> None:
    table = Table(title="TTFT: memories in the prompt vs in an activation (KV) cache")
    for col in ("memory tok", "query tok", "TTFT prompt s", "TTFT KV s", "reduction",
                "TTFT KV from disk s", "build s", "cache MB", "identical"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.memory_tokens), str(r.query_tokens), f"{r.ttft_prompt_s:.3f}",
                      f"{r.ttft_kv_s:.3f}", f"{r.reduction:.1%}", f"{r.ttft_kv_disk_s:.3f}",
                      f"{r.build_s:.2f}", f"{r.cache_bytes / 2**20:.1f}",
                      "yes" if r.identical else "NO")
    out.print(table)
