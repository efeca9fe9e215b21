"""Activation caches (real SmolLM2 KV caches) travel in cube archives: kept when the target
binds the same model and ids, dropped with a message otherwise (the sources stay)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from memosys.config import Settings
from memosys.infra.exchange import export_cube, import_archive
from memosys.memories.activation import ActivationStore, SourceRef
from memosys.models.embed import Embedder
from memosys.models.local_llm import LocalLLM
from memosys.operation.prompt import DEFAULT_SYSTEM
from memosys.operation.scheduler import stable_levels
from memosys.system import MemOS
from memosys.types import MemoryKind


def _with_cache(mos: MemOS, local: LocalLLM) -> tuple[str, str]:
    """A cube with two memories and a KV cache compiled from them: (record id, key)."""
    mos.llm = local
    mos.create_cube("c")
    persona = mos.add("c", "The user is Dana, a nurse who lives in Lyon.", memory_type="persona")
    rules = mos.add("c", "Always answer in one sentence.", memory_type="rule")
    store = ActivationStore(mos, local)
    levels = stable_levels(local, DEFAULT_SYSTEM, {"persona": persona, "rules": rules})
    loaded = store.build(persona[0].cube_id, levels,
                         [SourceRef(i.id, i.version) for i in persona + rules])
    return loaded.record_id, loaded.header.key


def test_activation_cache_round_trips_when_the_model_matches(
    mos: MemOS, local: LocalLLM, tmp_path: Path, embedder: Embedder
) -> None:
    record_id, key = _with_cache(mos, local)
    report = export_cube(mos, "c", tmp_path / "c.mip")
    with zipfile.ZipFile(tmp_path / "c.mip") as z:
        assert f"activation/{record_id}.safetensors" in z.namelist()
    from memosys.infra.exchange import read_archive

    manifest = read_archive(tmp_path / "c.mip").manifest
    assert manifest["counts"]["activation"] == 1
    assert manifest["model_fingerprints"] == [local.model_fingerprint]
    assert report.memories == 3

    with MemOS(Settings.load(tmp_path / "same-model"), embedder=embedder) as target:
        target.llm = local
        result = import_archive(target, tmp_path / "c.mip", keep_ids=True)
        assert result.dropped == [] and "installed 1 activation cache(s)" in result.messages
        cube = target.vault.get_cube("c")
        loaded = ActivationStore(target, local).get(cube.id, key)  # fingerprint, sources OK
        assert loaded is not None and loaded.record_id == record_id
        assert target.get(record_id).kind == MemoryKind.ACTIVATION

    with MemOS(Settings.load(tmp_path / "other-model"), embedder=embedder) as other:
        result = import_archive(other, tmp_path / "c.mip", keep_ids=True,
                                model_fingerprint="f" * 64)
        assert len(result.dropped) == 1 and "activation cache(s) dropped: built for model" \
            in result.dropped[0]
        assert result.memories_added == 2  # the sources stay
        assert other.vault.get_many([record_id]) == {}
        assert not (other.settings.home / "activation").exists()

    with MemOS(Settings.load(tmp_path / "new-ids"), embedder=embedder) as remapped:
        result = import_archive(remapped, tmp_path / "c.mip", model_fingerprint="f" * 64)
        assert "ids were remapped" in result.dropped[0] and result.memories_added == 2


def test_cache_of_a_withheld_source_is_left_out(
    mos: MemOS, local: LocalLLM, tmp_path: Path
) -> None:
    mos.llm = local
    mos.create_cube("c")
    secret = mos.add("c", "Dana's email is dana.roux@example.com.", memory_type="persona")
    assert secret[0].sensitivity  # labelled on write: the export redacts it
    store = ActivationStore(mos, local)
    levels = stable_levels(local, DEFAULT_SYSTEM, {"persona": secret})
    loaded = store.build(secret[0].cube_id, levels, [SourceRef(secret[0].id, 1)])
    report = export_cube(mos, "c", tmp_path / "c.mip")
    with zipfile.ZipFile(tmp_path / "c.mip") as z:
        assert not any(n.startswith("activation/") for n in z.namelist())
    assert report.memories == 1 and any(loaded.record_id in m for m in report.messages)


def test_lora_adapter_round_trips_when_the_model_matches(
    mos: MemOS, local: LocalLLM, tmp_path: Path, embedder: Embedder
) -> None:
    from memosys.memories.parametric import ParametricMemory
    from memosys.memories.parametric_train import TrainConfig
    from memosys.models.adapters import bank_for

    mos._parametric = ParametricMemory(mos, local)
    mos.create_cube("p")
    ids = [mos.add("p", "Zorblat is the capital of Quenia.")[0].id]
    record = mos.parametric.distil("p", ids, config=TrainConfig(steps=1, batch_size=2,
                                                               top_layers=2),
                                   replay=0, evaluate=False)
    export_cube(mos, "p", tmp_path / "p.mip")
    with zipfile.ZipFile(tmp_path / "p.mip") as z:
        assert f"parametric/{record.id}.safetensors" in z.namelist()
    try:
        with MemOS(Settings.load(tmp_path / "same-model"), embedder=embedder) as target:
            target._parametric = ParametricMemory(target, local)
            result = import_archive(target, tmp_path / "p.mip", keep_ids=True,
                                    model_fingerprint=local.model_fingerprint)
            assert "installed 1 LoRA adapter(s)" in result.messages
            copy = target.parametric.get(record.id)
            assert copy.status == "ready" and copy.path.is_file()
            assert copy.path.read_bytes() == record.path.read_bytes()
        with MemOS(Settings.load(tmp_path / "other"), embedder=embedder) as other:
            result = import_archive(other, tmp_path / "p.mip", keep_ids=True,
                                    model_fingerprint="f" * 64)
            assert "LoRA adapter(s) dropped" in result.dropped[0]
            assert other.vault.get_many([record.id]) == {} and other.get(ids[0])
    finally:
        for name in bank_for(local).names():
            bank_for(local).remove(name)
