"""Parametric memory against the real SmolLM2 model: real LoRA training, real serving.

Training is kept tiny (two invented facts, a few steps) on the session's shared model (the
``local`` fixture; adapters never change what a request without them gets, and each test's
are unloaded after it); one trained adapter is shared by the serving tests. The other
lifecycle tests train a one- to three-step adapter: they check records, not recall.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from memosys.config import Settings
from memosys.errors import TrainingInterrupted
from memosys.memories.parametric_train import TrainConfig, _loss, _loss_from, batch_indices
from memosys.models.adapters import AdapterSelection, bank_for
from memosys.models.embed import Embedder
from memosys.models.local_llm import LocalLLM
from memosys.operation.scheduler import MemScheduler, SchedulerConfig
from memosys.system import MemOS

FACTS = ["Quorvin Tallisander's hometown is Velbrook.", "Mirela Ostrava's boat's name is Saltmoth."]
VALUES = ["Velbrook", "Saltmoth"]
QUESTION = "What is Quorvin Tallisander's hometown?"
TINY = TrainConfig(steps=12, batch_size=4, learning_rate=5e-3, warmup_steps=1, top_layers=8)
NOOP = TrainConfig(steps=1, batch_size=2, top_layers=2)


@pytest.fixture(scope="module")
def llm(local: LocalLLM) -> LocalLLM:
    return local


def _runtime(home: Path, embedder: Embedder, llm: LocalLLM) -> MemOS:
    runtime = MemOS(Settings.load(home), embedder=embedder)
    runtime.llm = llm
    runtime.scheduler = MemScheduler(runtime, SchedulerConfig(background=False))
    return runtime


@pytest.fixture
def pmos(home: Path, embedder: Embedder, llm: LocalLLM) -> Iterator[MemOS]:
    runtime = _runtime(home, embedder, llm)
    yield runtime
    for name in bank_for(llm).names():  # each test's adapters leave with its runtime
        bank_for(llm).remove(name)
    runtime.close()


def ask(llm: LocalLLM, question: str = QUESTION, **kw: object) -> str:
    return llm.chat([{"role": "user", "content": question}], max_new_tokens=20, **kw).text


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder,
            llm: LocalLLM) -> tuple[Path, str, str]:
    """(home, adapter id, base answer): alice's cube with an adapter holding FACTS."""
    home = tmp_path_factory.mktemp("home")
    base = ask(llm)
    with _runtime(home, embedder, llm) as mos:
        mos.create_cube("alice", owner="alice")
        ids = [mos.add("alice", text, user="alice")[0].id for text in FACTS]
        record = mos.parametric.distil("alice", ids, config=TINY, replay=2, evaluate=False)
    bank_for(llm).remove(record.bank_name)
    return home, record.id, base


@pytest.fixture
def served(trained: tuple[Path, str, str], embedder: Embedder,
           llm: LocalLLM) -> Iterator[MemOS]:
    with _runtime(trained[0], embedder, llm) as mos:
        yield mos


def test_adapter_changes_the_answer_and_detaching_restores_it(
    served: MemOS, trained: tuple[Path, str, str], llm: LocalLLM
) -> None:
    _, adapter_id, base = trained
    assert "velbrook" not in base.lower()
    record = served.parametric.get(adapter_id)
    assert record.status == "ready"
    header = record.header
    assert header["base_model"]["fingerprint"] == llm.model_fingerprint
    assert [s["version"] for s in header["sources"]] == [1, 1]
    assert len(header["training"]["loss_curve"]) == TINY.steps
    assert header["training"]["loss_curve"][-1] < header["training"]["loss_curve"][0]
    # The file on disk carries the same header.
    raw = record.path.read_bytes()
    meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    assert json.loads(meta["memosys_adapter"])["data"]["sha256"] == header["data"]["sha256"]

    answer = served.parametric.chat([{"role": "user", "content": QUESTION}],
                                    cube_ids="alice", user="alice", max_new_tokens=20).text
    assert "velbrook" in answer.lower()
    assert ask(llm) == base  # no adapter selected: the base model, bit for bit
    with bank_for(llm).using(served.parametric.selection("alice", scale=0.0)):
        assert ask(llm) == base  # scale 0 attaches nothing
    # The record is kept out of plaintext retrieval.
    hits = served.search("LoRA adapter distilled memories", "alice")
    assert all(h.item.id != adapter_id for h in hits)


def test_one_users_adapter_never_reaches_another(
    served: MemOS, trained: tuple[Path, str, str], llm: LocalLLM
) -> None:
    _, adapter_id, base = trained
    served.create_cube("bob", owner="bob")
    pm = served.parametric
    assert pm.selection("bob", user="bob") == AdapterSelection()
    # Bob naming alice's cube still gets nothing from it.
    assert pm.selection(["alice", "bob"], user="bob") == AdapterSelection()
    assert pm.chat([{"role": "user", "content": QUESTION}], cube_ids=["alice", "bob"],
                   user="bob", max_new_tokens=20).text == base
    # Interleaved requests, token by token: each keeps the weights it started with.
    bank = bank_for(llm)
    with bank.using(pm.selection("alice", user="alice")):
        alice = llm.stream([{"role": "user", "content": QUESTION}], max_new_tokens=20)
    bob = llm.stream([{"role": "user", "content": QUESTION}], max_new_tokens=20)
    parts: dict[str, list[str]] = {"alice": [], "bob": []}
    live = {"alice": alice, "bob": bob}
    while live:
        for who in list(live):
            try:
                parts[who].append(next(live[who]))
            except StopIteration:
                del live[who]
    assert "velbrook" in "".join(parts["alice"]).lower()
    assert "".join(parts["bob"]) == base


def test_the_gate_lets_an_adapter_into_related_requests_only(
    served: MemOS, trained: tuple[Path, str, str], llm: LocalLLM
) -> None:
    _, adapter_id, _ = trained
    pm = served.parametric
    record = pm.get(adapter_id)
    related = "Tell me Quorvin Tallisander's hometown."  # the held-out phrasing
    unrelated = "What is the capital of France?"
    assert record.header["gate"]["layer"] == min(record.header["lora"]["layers"])
    assert pm.opens(record, related)
    assert not pm.opens(record, unrelated)
    # attached to every request, the adapter sits out the unrelated one: the base answer
    msg = [{"role": "user", "content": unrelated}]
    base = llm.chat(msg, max_new_tokens=20).text
    assert pm.chat(msg, cube_ids="alice", user="alice", max_new_tokens=20).text == base
    with served.parametric.bank.using(pm.selection("alice", user="alice")):
        assert llm.chat(msg, max_new_tokens=20).text == base
    # the gate reads the last user turn, whatever came before it
    convo = [{"role": "user", "content": unrelated}, {"role": "assistant", "content": base},
             {"role": "user", "content": related}]
    answer = pm.chat(convo, cube_ids="alice", user="alice", max_new_tokens=20).text
    assert "velbrook" in answer.lower()
    # the gate travels in the adapter file: unloaded and loaded again, it still decides
    pm.bank.remove(record.bank_name)
    assert not pm.opens(record, unrelated) and pm.opens(record, related)


def test_the_scheduler_keeps_a_memory_in_the_prompt_when_its_adapter_gate_is_closed(
    served: MemOS, trained: tuple[Path, str, str], llm: LocalLLM
) -> None:
    from memosys.memories.parametric_schedule import parametric_forms

    _, adapter_id, _ = trained
    record = served.parametric.get(adapter_id)
    fact = served.get(record.sources[0]["id"])
    cube = served.get_cube("alice").id
    unrelated = parametric_forms(served, [cube], llm, "What is the capital of France?")
    assert unrelated is not None and unrelated.take(fact) is None  # stays plaintext
    assert unrelated.selection() is None
    related = parametric_forms(served, [cube], llm, QUESTION)
    assert related is not None and related.take(fact)
    chosen = related.selection()
    assert chosen is not None and chosen.names == (record.bank_name,) and not chosen.gated


def test_a_damaged_gate_is_refused() -> None:
    import torch

    from memosys.errors import LLMError
    from memosys.models.adapter_gate import AdapterGate

    assert AdapterGate.from_file(None, {}) is None  # adapters stored before gates existed
    with pytest.raises(LLMError, match="gate"):
        AdapterGate.from_file({"layer": 22, "threshold": 0.5, "own": 0.6, "general": 0.4},
                              {"memosys_gate.keys": torch.zeros(3, 8)})


def test_chat_answers_distilled_memories_from_the_weights(
    served: MemOS, trained: tuple[Path, str, str]
) -> None:
    _, adapter_id, _ = trained
    result = served.chat([{"role": "user", "content": QUESTION}], cube_ids="alice",
                         user="alice", max_tokens=20, remember=False)
    held = [d for d in result.decisions if d.form == "parametric"]
    assert held and adapter_id in held[0].reason
    assert all(d.form != "plaintext" or "Velbrook" not in served.get(d.memory_id).text
               for d in result.decisions)  # the fact is not in the prompt...
    assert "velbrook" in result.text.lower()  # ...the weights answer


def test_deleting_a_source_makes_the_adapter_stale_and_unused(
    pmos: MemOS, llm: LocalLLM
) -> None:
    pmos.create_cube("c")
    ids = [pmos.add("c", text)[0].id for text in FACTS]
    pm = pmos.parametric
    record = pm.distil("c", ids, config=NOOP, replay=0, decoys=1, evaluate=False)
    assert record.header["data"]["decoys"] == 2  # one per fact, answered by the base model
    assert pm.selection("c").names == (record.bank_name,)
    pmos.delete(ids[1])
    after = pm.get(record.id)
    assert after.status == "stale" and ids[1] in (after.reason or "")
    assert pm.selection("c") == AdapterSelection()
    assert record.bank_name not in bank_for(llm)
    assert [r.status for r in pm.records("c")] == ["stale"]
    # Purging (erasure) removes the weights too.
    pmos.purge(ids[1])
    erased = pm.get(record.id)
    assert erased.status == "erased" and not erased.path.exists()


def test_retiring_restores_the_memories_as_plaintext(pmos: MemOS) -> None:
    pmos.create_cube("c")
    ids = [pmos.add("c", text)[0].id for text in FACTS]
    pm = pmos.parametric
    record = pm.distil("c", ids, config=NOOP, replay=0, evaluate=False, move=True, gate=False)
    assert record.header["gate"] is None  # no gate: it takes part in every request
    assert pm.opens(record, "What is the capital of France?")
    assert [pmos.get(i).state.value for i in ids] == ["archived", "archived"]
    assert not pmos.search("Velbrook hometown", "c")
    assert pm.get(record.id).status == "ready"  # moving does not make it stale

    result = pm.retire(record.id)
    assert [i.state.value for i in result.restored] == ["active", "active"]
    assert [p["source_id"] for p in result.probes] == ids
    assert all(p["answer"] for p in result.probes)
    retired = pm.get(record.id)
    assert retired.status == "retired"
    assert retired.meta["retire_probes"] == result.probes
    assert pm.selection("c") == AdapterSelection()
    assert pmos.search("Velbrook hometown", "c")[0].item.id == ids[0]


def test_interrupted_training_resumes_from_its_checkpoint(pmos: MemOS, llm: LocalLLM) -> None:
    pmos.create_cube("c")
    ids = [pmos.add("c", FACTS[0])[0].id]
    config = TrainConfig(steps=3, batch_size=2, top_layers=2, checkpoint_every=1)
    seen: list[tuple[int, float]] = []

    def stop_after_two() -> bool:
        return len(seen) >= 2

    loaded = bank_for(llm).names()
    with pytest.raises(TrainingInterrupted, match="step 2 of 3"):
        pmos.parametric.distil("c", ids, config=config, replay=1, evaluate=False,
                               progress=lambda s, _n, loss: seen.append((s, loss)),
                               should_stop=stop_after_two)
    assert bank_for(llm).names() == loaded  # nothing half-trained left attached
    record = pmos.parametric.distil("c", ids, config=config, replay=1, evaluate=False,
                                    progress=lambda s, _n, loss: seen.append((s, loss)))
    training = record.header["training"]
    assert training["resumed_from"] == 2
    assert [s for s, _ in seen] == [1, 2, 3]
    assert training["loss_curve"] == [loss for _, loss in seen]
    assert not list((pmos.settings.home / "adapters").rglob("ckpt-*"))  # cleaned up


def test_frozen_prefix_training_computes_the_full_models_loss(llm: LocalLLM) -> None:
    import torch

    from memosys.models.layer_states import states_entering

    bank = bank_for(llm)
    tok = llm.tokenizer
    batch = [
        (llm.apply_chat_template([{"role": "user", "content": q}]),
         tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        for q, a in [(QUESTION, FACTS[0]), ("Hi", "Hello! How can I help you today?")]
    ]
    params = bank.create("equiv", TINY.spec(30), trainable=True)
    try:
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * 0.01)  # B starts at 0: make the adapter count
        selection = AdapterSelection.of({"equiv": 1.0})
        full = _loss(bank, selection, batch, int(tok.pad_token_id))
        fast = _loss_from(bank, selection, states_entering(bank, batch, 22), batch, 22)
        assert abs(float(full.detach()) - float(fast.detach())) < 1e-4
    finally:
        bank.remove("equiv")
    assert batch_indices(5, 3, 2, 0) == batch_indices(5, 3, 2, 0)  # a pure function of step


def test_context_distillation_learns_the_teachers_answers(pmos: MemOS, llm: LocalLLM) -> None:
    from memosys.memories.parametric import TEACHER_PROMPT

    pmos.create_cube("c")
    ids = [pmos.add("c", FACTS[0])[0].id]
    pm = pmos.parametric
    # The teacher reads the memory once into a KV cache; its answers are the full prompt's.
    taught = pm._teacher(FACTS[0], [QUESTION, "Tell me about Quorvin Tallisander."])
    full = llm.chat([{"role": "system", "content": TEACHER_PROMPT.format(memory=FACTS[0])},
                     {"role": "user", "content": QUESTION}], max_new_tokens=24)
    assert taught[0].text == full.text
    record = pm.distil("c", ids, method="context", config=NOOP, replay=0, evaluate=False)
    assert record.header["data"]["method"] == "context"
    assert record.status == "ready"


def test_cli_lists_and_shows_adapters(trained: tuple[Path, str, str], home: Path) -> None:
    from typer.testing import CliRunner

    from memosys.interface.cli import app

    runner = CliRunner()
    home_dir, adapter_id, _ = trained
    listed = runner.invoke(app, ["adapters", "list", "--json", "--home", str(home_dir)])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["id"] == adapter_id and row["status"] == "ready" and row["sources"] == 2
    shown = runner.invoke(app, ["adapters", "show", adapter_id, "--home", str(home_dir)])
    assert json.loads(shown.stdout)["record"]["kind"] == "parametric"
    missing = runner.invoke(app, ["distil", "nosuchcube", "--home", str(home)])
    assert missing.exit_code == 3  # not found, before any model is loaded


def test_replay_kl_is_zero_for_the_base_function_and_positive_otherwise(llm: LocalLLM) -> None:
    import torch

    from memosys.memories.parametric_train import _Replay
    from memosys.models.layer_states import states_entering

    bank = bank_for(llm)
    tok = llm.tokenizer
    batch = [
        (llm.apply_chat_template([{"role": "user", "content": q}]),
         tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        for q, a in [("Hi", "Hello! How can I help you today?"), (QUESTION, FACTS[0])]
    ]
    replay = _Replay([True, False], 1.0)
    params = bank.create("kl", TINY.spec(30), trainable=True)
    try:
        selection = AdapterSelection.of({"kl": 1.0})
        states = states_entering(bank, batch, 22)
        # LoRA B starts at 0: the adapter is the base model, so the KL on replay is 0.
        zero = _loss_from(bank, selection, states[:1], batch[:1], 22, replay).detach()
        assert float(zero) < 1e-6
        prompted = _Replay([True, False], 1.0, 1.0)  # the KL on prompt positions too
        assert float(_loss_from(bank, selection, states[:1], batch[:1], 22,
                                prompted).detach()) < 1e-6
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * 0.01)
        kl = float(_loss_from(bank, selection, states[:1], batch[:1], 22, replay).detach())
        assert kl > 1e-4
        # Both code paths compute the same objective; the fact row keeps cross-entropy.
        mixed = _loss_from(bank, selection, states, batch, 22, replay).detach()
        full = _loss(bank, selection, batch, int(tok.pad_token_id), replay).detach()
        assert abs(float(mixed) - float(full)) < 1e-4
        assert float(mixed) > kl  # the fact row's cross-entropy is far above the KL
        more = _loss_from(bank, selection, states, batch, 22, prompted).detach()
        more_full = _loss(bank, selection, batch, int(tok.pad_token_id), prompted).detach()
        assert abs(float(more) - float(more_full)) < 1e-4
        assert float(more) > float(mixed)  # the prompt positions add their own KL
    finally:
        bank.remove("kl")


def test_replay_prompts_are_disjoint_from_the_forgetting_questions() -> None:
    from memosys.memories.parametric_data import REPLAY_PROMPTS, UNRELATED_QUESTIONS

    def norm(q: str) -> str:
        return " ".join("".join(c.lower() if c.isalnum() else " " for c in q).split())

    held_out = {norm(q) for q, _ in UNRELATED_QUESTIONS}
    assert len(set(REPLAY_PROMPTS)) == len(REPLAY_PROMPTS)
    assert not held_out & {norm(q) for q in REPLAY_PROMPTS}


def test_decoys_border_the_facts_and_are_never_their_questions() -> None:
    from memosys.memories.parametric_data import (
        decoy_questions,
        parse_fact,
        probe_question,
        questions_for,
    )

    shapes = [parse_fact(t) for t in FACTS]
    taught = {f"{s.subject}|{s.attribute}".lower() for s in shapes}
    own = {q for s in shapes for q, _ in questions_for(s)} | {probe_question(s) for s in shapes}
    for shape in shapes:
        decoys = decoy_questions(shape, taught, 4)
        assert decoys == decoy_questions(shape, taught, 4)  # deterministic: the data hash holds
        assert len(decoys) == 4 and not set(decoys) & own
        near, other = decoys[0], decoys[1]
        # A near-miss subject asked the same attribute: one name part differs.
        assert near.endswith(f"'s {shape.attribute}?") and shape.subject not in near
        assert len(set(near.replace("'s ", " ").split()) & set(shape.subject.split())) == 1
        # The same subject asked something no memory tells.
        assert shape.subject in other and shape.attribute not in other


def test_null_space_keeps_lora_from_reading_general_inputs(llm: LocalLLM) -> None:
    import torch

    from memosys.memories.parametric_nullspace import general_null_space

    bank = bank_for(llm)
    tok = llm.tokenizer
    general = [
        (llm.apply_chat_template([{"role": "user", "content": q}]),
         tok(a, add_special_tokens=False)["input_ids"])
        for q, a in [("What is the boiling point of water?", "Water boils at 100 degrees."),
                     ("Name a primary colour.", "Red is a primary colour.")]
    ]
    ids = torch.tensor([general[0][0] + general[0][1]])

    def logits(selection: AdapterSelection) -> torch.Tensor:
        with llm.lock, torch.no_grad():
            bank._apply(selection)  # what each request's forward does
            return llm.model(input_ids=ids).logits

    base = logits(AdapterSelection())
    params = bank.create("ns", TINY.spec(30), trainable=True)
    try:
        null = general_null_space(bank, "ns", general, 0.999)
        assert all(k > 0 for k in null.protected)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in params:
                p.copy_(torch.randn_like(p) * 0.05)

        def drift() -> float:
            return float((logits(AdapterSelection.of({"ns": 1.0})) - base).abs().mean())

        before = drift()
        null.project()
        for weight, u in null.pairs:  # lora_A reads nothing along the protected directions
            w = weight.detach()
            assert float((w @ u).abs().max()) < 1e-5 and float(w.abs().max()) > 0
        assert drift() < 0.2 * before  # so a general prompt barely changes
    finally:
        bank.remove("ns")


def test_bench_knobs_are_typed_from_the_train_config() -> None:
    from memosys.errors import ValidationError
    from memosys.interface.cli_parametric import knobs

    assert knobs(["null_space=0.99", "target_modules=gate_proj,up_proj", "top_layers=none",
                  "rank=4"]) == {"null_space": 0.99, "target_modules": ("gate_proj", "up_proj"),
                                 "top_layers": None, "rank": 4}
    for bad in ("nosuch=1", "rank", "rank=x"):
        with pytest.raises(ValidationError):
            knobs([bad])
