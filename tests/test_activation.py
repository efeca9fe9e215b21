"""Activation memory against the real SmolLM2: KV caches compiled from memories give the same
greedy output as the text in the prompt, are refused when stale or foreign, fit a budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from memosys.errors import ActivationModelMismatchError, StaleActivationError
from memosys.memories.activation import ActivationStore, LoadedActivation, SourceRef
from memosys.models.local_llm import LocalLLM
from memosys.operation.prompt import DEFAULT_SYSTEM, stable_text
from memosys.operation.scheduler import MemScheduler, SchedulerConfig, stable_levels
from memosys.system import MemOS
from memosys.types import MemoryItem, MemoryKind

QUERIES = ["What should I cook tonight?", "Where does my sister live?",
           "Give me one tip for my trip."]


@pytest.fixture
def amos(mos: MemOS, local: LocalLLM) -> Iterator[MemOS]:
    mos.llm = local
    mos.scheduler = MemScheduler(mos, SchedulerConfig(background=False))
    mos.create_cube("c")
    yield mos


def _store(mos: MemOS, local: LocalLLM) -> ActivationStore:
    return mos.scheduler.activation_store(local)


def _memories(mos: MemOS) -> dict[str, list[MemoryItem]]:
    persona = mos.add("c", "The user is Dana, a vegetarian nurse who lives in Lyon.",
                      memory_type="persona")
    rules = mos.add("c", "Always answer in two sentences or fewer.", memory_type="rule")
    rules += mos.add("c", "Never recommend meat dishes.", memory_type="rule")
    background = mos.add("c", "Dana's sister Mia lives in Montreal and is a pilot.",
                         memory_type="fact")
    return {"persona": persona, "rules": rules, "background": background}


def _build(store: ActivationStore, local: LocalLLM, sections: dict[str, list[MemoryItem]],
           base: str = DEFAULT_SYSTEM) -> LoadedActivation:
    levels = stable_levels(local, base, sections)
    sources = [SourceRef(i.id, i.version) for items in sections.values() for i in items]
    cube = next(i for items in sections.values() for i in items).cube_id
    return store.build(cube, levels, sources)


def _prompt_ids(local: LocalLLM, sections: dict[str, list[MemoryItem]], query: str,
                base: str = DEFAULT_SYSTEM) -> list[int]:
    """The same text put in the prompt, tokenized by the chat template as a whole."""
    return local.apply_chat_template([
        {"role": "system", "content": stable_text(base, sections)},
        {"role": "user", "content": query},
    ])


def test_cached_generation_is_identical_to_the_text_in_the_prompt(
    amos: MemOS, local: LocalLLM
) -> None:
    store = _store(amos, local)
    sections = _memories(amos)
    loaded = _build(store, local, sections)
    assert loaded.source == "built" and loaded.header.token_count == loaded.n_tokens > 40
    record = amos.get(loaded.record_id)
    assert record.kind == MemoryKind.ACTIVATION
    assert sorted(record.derived_from) == sorted(i.id for s in sections.values() for i in s)
    header = record.metadata["activation"]
    assert header["model_fingerprint"] == local.model_fingerprint
    assert header["token_count"] == loaded.n_tokens and header["bytes"] > 0
    assert {s["version"] for s in header["sources"]} == {1}

    store.forget_loaded()  # the next use reads the file back
    from_disk = store.get(record.cube_id, loaded.header.key)
    assert from_disk is not None and from_disk.source == "disk"
    for query in QUERIES:
        ids = _prompt_ids(local, sections, query)
        assert ids[: from_disk.n_tokens] == from_disk.token_ids  # a true token prefix
        with_cache = store.generate(from_disk, ids[from_disk.n_tokens:], max_new_tokens=20)
        in_prompt = local.generate(ids, max_new_tokens=20)
        assert with_cache.text == in_prompt.text and with_cache.text
        assert with_cache.prompt_tokens == in_prompt.prompt_tokens


def test_levels_are_reused_and_the_result_stays_identical(amos: MemOS, local: LocalLLM) -> None:
    store = _store(amos, local)
    sections = _memories(amos)
    first = _build(store, local, {"persona": sections["persona"], "rules": sections["rules"]})
    # A rule edited: the system and persona levels are the same tokens at the same positions,
    # so only the rules level is prefilled again.
    edited = amos.update(sections["rules"][1].id, text="Never recommend fish dishes.")
    changed = {"persona": sections["persona"], "rules": [sections["rules"][0], edited]}
    second = _build(store, local, changed)
    persona_end = first.header.levels[1][0]
    assert second.header.reused_tokens == persona_end > 0
    ids = _prompt_ids(local, changed, QUERIES[0])
    assert store.generate(second, ids[second.n_tokens:], max_new_tokens=16).text == \
        local.generate(ids, max_new_tokens=16).text


def test_a_stale_cache_is_never_used(amos: MemOS, local: LocalLLM) -> None:
    store = _store(amos, local)
    sections = _memories(amos)
    loaded = _build(store, local, sections)
    cube, key = loaded.cube_id, loaded.header.key
    amos.update(sections["background"][0].id, text="Dana's sister Mia lives in Quebec City.")
    with pytest.raises(StaleActivationError, match="changed"):
        store.get(cube, key)  # in memory: still checked
    store.forget_loaded()
    with pytest.raises(StaleActivationError):
        store.get(cube, key)  # from disk
    with pytest.raises(StaleActivationError):  # building from old versions is refused too
        _build(store, local, sections)
    # The sweep deletes it everywhere: file, memory, record.
    assert store.sweep(cube) == [loaded.record_id]
    assert not store.path_for(cube, loaded.record_id).exists()
    assert amos.get(loaded.record_id).state.value == "deleted"
    assert store.get(cube, key) is None

    # Through the scheduler the same memories go in as text while a fresh build is queued.
    plan = amos.scheduler.plan(amos, "Where does my sister live?", [cube],
                               base_system=DEFAULT_SYSTEM, model=local.id,
                               count_tokens=lambda t: len(t) // 4, local_llm=local)
    assert plan.activation is None
    assert any("queued cache build" in e for e in plan.record.events)
    stable = [d for d in plan.record.decisions if d.section in ("persona", "rules")]
    assert stable and {d.form for d in stable} == {"plaintext"}
    assert all("build queued" in d.reason for d in stable)


def test_deleting_a_source_removes_its_cache(amos: MemOS, local: LocalLLM) -> None:
    store = _store(amos, local)
    sections = _memories(amos)
    loaded = _build(store, local, {"rules": sections["rules"]})
    amos.delete(sections["rules"][0].id)
    with pytest.raises(StaleActivationError, match="deleted"):
        store.get(loaded.cube_id, loaded.header.key)
    amos.purge(sections["rules"][1].id)
    assert store.sweep(loaded.cube_id) == [loaded.record_id]
    assert store.files() == []


def _rewrite_header(path: Path, **changes: str) -> None:
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    header = json.loads(meta["memosys"])
    header.update(changes)
    meta["memosys"] = json.dumps(header)
    save_file(tensors, str(path), metadata=meta)


def test_a_cache_of_another_model_is_refused(amos: MemOS, local: LocalLLM) -> None:
    store = _store(amos, local)
    loaded = _build(store, local, {"rules": _memories(amos)["rules"]})
    path = store.path_for(loaded.cube_id, loaded.record_id)
    _rewrite_header(path, model_fingerprint="0" * 64, model_id="local:other-model")
    store.forget_loaded()
    with pytest.raises(ActivationModelMismatchError, match="other-model"):
        store.load(path, cube_id=loaded.cube_id, record_id=loaded.record_id)
    _rewrite_header(path, model_fingerprint=local.model_fingerprint, tokenizer_id="f" * 64)
    with pytest.raises(ActivationModelMismatchError, match="tokenizer"):
        store.get(loaded.cube_id, loaded.header.key)
    # Wrong tensor shapes (a model with other dimensions) are refused as well.
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    tensors["k.0"] = torch.zeros(1, 2, loaded.n_tokens, 64)
    header = json.loads(meta["memosys"])
    header["tokenizer_id"] = store.tokenizer_id
    save_file(tensors, str(path), metadata={"memosys": json.dumps(header)})
    with pytest.raises(ActivationModelMismatchError, match="layer 0"):
        store.get(loaded.cube_id, loaded.header.key)


def test_budget_evicts_the_coldest_and_it_is_rebuilt_on_demand(
    amos: MemOS, local: LocalLLM
) -> None:
    sections = _memories(amos)
    store = _store(amos, local)
    one = _build(store, local, {"rules": sections["rules"][:1]})
    store.budget_bytes = int(one.header.bytes * 1.5)  # room for one cache of this size
    store.touch(one)  # used: hotter than the next one
    two = _build(store, local, {"rules": sections["rules"][1:]})
    # The new cache is kept even though colder; the older one loses its file.
    assert store.evictions == [one.record_id]
    assert not store.path_for(one.cube_id, one.record_id).exists()
    assert store.disk_bytes() <= store.budget_bytes
    assert store.get(one.cube_id, one.header.key) is None  # evicted: not served
    three = _build(store, local, {"rules": sections["rules"][:1]})  # rebuilt on demand
    assert three.record_id == one.record_id and three.header.key == one.header.key
    assert store.path_for(one.cube_id, one.record_id).exists()
    assert store.evictions[-1] == two.record_id
    record = amos.get(one.record_id)
    assert record.state.value == "active" and record.kind == MemoryKind.ACTIVATION


def test_ttft_bench_writes_the_documented_json(local: LocalLLM, tmp_path: Path,
                                               home: Path) -> None:
    from rich.console import Console

    from memosys.bench.ttft import run_ttft_bench
    from memosys.config import Settings

    target = tmp_path / "ttft.json"
    rows = run_ttft_bench((48,), repeats=1, max_new_tokens=4, json_file=target,
                          out=Console(file=open(tmp_path / "log", "w")),  # noqa: SIM115
                          llm=local, settings=Settings.load(home), threads=None)
    data = json.loads(target.read_text())
    assert len(data["rows"]) == 2 == len(rows)  # short and long query
    for row in data["rows"]:
        assert {"memory_tokens", "query_tokens", "ttft_prompt_s", "ttft_kv_s", "reduction",
                "build_s", "cache_bytes", "identical"} <= set(row)
        assert row["identical"] is True and row["memory_tokens"] >= 48
        assert row["cache_bytes"] > 0
