"""`memosys bench parametric`: distil invented facts into one adapter and measure it.

The facts are invented (made-up people with made-up hometowns, pets, employers ... whose
values are made-up words), so the base model cannot know them and "before" is honestly low.
Recall is closed-book - nothing in the prompt - on a *held-out* phrasing of each question
(the adapter was trained on two other phrasings and a statement), scored by containment of
the value (normalised: case, punctuation). Forgetting is measured on
:data:`~memosys.memories.parametric_data.UNRELATED_QUESTIONS`, which are not among the replay
prompts: an answer agrees with the base model's when their first sentences (generation stops
there) are the same after normalisation, or when both contain the question's reference
answer.

The adapter is attached to every request, as served: ``recall_after`` and
``unrelated_agreement`` include its gate (:mod:`memosys.models.adapter_gate`, calibrated on
the adapter's own training questions and the replay prompts, never on these questions).
``recall_after_ungated`` and ``unrelated_agreement_ungated`` measure the LoRA weights alone,
gate switched off: how much the weights themselves forget.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from memosys.config import Settings
from memosys.memories.parametric import FIRST_SENTENCE
from memosys.memories.parametric_data import UNRELATED_QUESTIONS
from memosys.memories.parametric_records import contains
from memosys.memories.parametric_train import TrainConfig
from memosys.models.local_llm import default_cache_dir
from memosys.system import MemOS

__all__ = ["BenchFact", "agrees", "invented_facts", "run_parametric_bench"]

_ATTRIBUTES = (
    "hometown", "employer", "pet's name", "favourite dish", "boat's name", "secret code word",
    "mentor", "street", "childhood nickname", "favourite band", "lucky charm", "garden flower",
    "violin's name", "horse's name", "club", "favourite island", "password hint",
    "ancestral village", "robot's name", "favourite tea",
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gl", "kr", "qu", "sk", "th", "tr", "vr", "zh")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "x", "sk", "th", "m", "nd")


@dataclass(frozen=True)
class BenchFact:
    subject: str
    attribute: str
    value: str

    @property
    def text(self) -> str:
        return f"{self.subject}'s {self.attribute} is {self.value}."


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables)).capitalize()


def invented_facts(n: int, seed: int = 7) -> list[BenchFact]:
    """``n`` facts about invented people with invented values (distinct words)."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(syllables: int) -> str:
        while True:
            word = _word(rng, syllables)
            if word.lower() not in used and len(word) >= 5:
                used.add(word.lower())
                return word

    return [
        BenchFact(f"{fresh(2)} {fresh(3)}", _ATTRIBUTES[i % len(_ATTRIBUTES)], fresh(3))
        for i in range(n)
    ]


def _norm(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())


def _first_sentence(text: str) -> str:
    for stop in (". ", "\n"):
        text = text.split(stop)[0]
    return _norm(text)


def agrees(base: str, adapted: str, reference: str) -> bool:
    ref = _norm(reference)
    return _first_sentence(base) == _first_sentence(adapted) or (
        ref in _norm(base) and ref in _norm(adapted)
    )


ProgressFactory = Callable[[str], AbstractContextManager[Callable[[int, int, float], None]]]


def run_parametric_bench(
    n_facts: int,
    config: TrainConfig,
    json_file: Path | None,
    console: Console,
    progress: ProgressFactory,
    replay: int | None = None,
    decoys: int | None = None,
) -> dict[str, Any]:
    facts = invented_facts(n_facts)
    with tempfile.TemporaryDirectory(prefix="memosys-bench-parametric-") as tmp:
        settings = Settings.load(Path(tmp), llm_cache_dir=default_cache_dir())
        with MemOS(settings) as mos:
            mos.create_cube("facts")
            ids = [mos.add("facts", f.text)[0].id for f in facts]
            pm = mos.parametric
            llm = pm.llm.load()
            ask = [{"role": "user", "content": q} for q, _ in UNRELATED_QUESTIONS]
            started = time.perf_counter()
            base = [llm.chat([m], max_new_tokens=24, stop=FIRST_SENTENCE).text for m in ask]
            base_s = time.perf_counter() - started
            with progress("training") as bar:
                record = pm.distil("facts", ids, name="bench", config=config, replay=replay,
                                   decoys=decoys, progress=bar)
            adapted = [pm.chat([m], cube_ids="facts", max_new_tokens=24, stop=FIRST_SENTENCE).text
                       for m in ask]
            ungated = [pm.chat([m], cube_ids="facts", max_new_tokens=24, stop=FIRST_SENTENCE,
                               gated=False).text for m in ask]
            fresh = pm.get(record.id)
            gate_scores = [round((pm.gate_score(fresh, q) or (1.0, 0.0))[0], 3)
                           for q, _ in UNRELATED_QUESTIONS]
            ungated_hits = []
            for probe in record.header["eval"]["probes"]:
                answer = pm.chat([{"role": "user", "content": probe["question"]}],
                                 cube_ids="facts", max_new_tokens=24, stop=FIRST_SENTENCE,
                                 gated=False).text
                ungated_hits.append(contains(answer, probe["expected"]))
            size = record.path.stat().st_size
    ev = record.header["eval"]
    training = record.header["training"]
    agree = [agrees(b, a, ref) for b, a, (_, ref) in zip(base, adapted, UNRELATED_QUESTIONS,
                                                          strict=True)]
    agree_ungated = [agrees(b, a, ref) for b, a, (_, ref) in zip(base, ungated,
                                                                  UNRELATED_QUESTIONS, strict=True)]
    acc_before = sum(_norm(r) in _norm(b) for b, (_, r) in zip(base, UNRELATED_QUESTIONS,
                                                               strict=True))
    acc_after = sum(_norm(r) in _norm(a) for a, (_, r) in zip(adapted, UNRELATED_QUESTIONS,
                                                              strict=True))
    result = {
        "facts": n_facts,
        "recall_before": ev["recall_before"],
        "recall_after": ev["recall_after"],
        "unrelated_agreement": round(sum(agree) / len(agree), 4),
        "recall_after_ungated": round(sum(ungated_hits) / max(1, len(ungated_hits)), 4),
        "unrelated_agreement_ungated": round(sum(agree_ungated) / len(agree_ungated), 4),
        "gate": record.header["gate"],
        "unrelated_accuracy_before": round(acc_before / len(agree), 4),
        "unrelated_accuracy_after": round(acc_after / len(agree), 4),
        "train_s": training["train_s"],
        "adapter_bytes": size,
        "steps": training["steps"],
        "final_loss": training["loss_curve"][-1],
        "examples": record.header["data"]["examples"],
        "replay": record.header["data"]["replay"],
        "decoys": record.header["data"].get("decoys", 0),
        "config": config.to_json(),
        "base_answer_s": round(base_s / len(ask), 2),
        "probes": ev["probes"],
        "unrelated": [
            {"question": q, "reference": r, "base": b, "adapted": a, "agrees": g,
             "ungated": ua, "gate_score": sc}
            for (q, r), b, a, g, ua, sc in zip(UNRELATED_QUESTIONS, base, adapted, agree, ungated,
                                               gate_scores, strict=True)
        ],
    }
    table = Table(title=f"parametric memory: {n_facts} invented facts, one LoRA adapter")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in (
        ("recall_before", "closed-book recall before"),
        ("recall_after", "closed-book recall after"),
        ("unrelated_agreement", "unrelated questions: agreement with base"),
        ("recall_after_ungated", "closed-book recall after, weights alone (no gate)"),
        ("unrelated_agreement_ungated", "unrelated questions: agreement, weights alone"),
        ("unrelated_accuracy_before", "unrelated accuracy before"),
        ("unrelated_accuracy_after", "unrelated accuracy after"),
        ("train_s", "training time (s)"),
        ("steps", "steps"),
        ("final_loss", "final loss"),
        ("adapter_bytes", "adapter bytes"),
    ):
        value = result[key]
        table.add_row(label, f"{value:.0%}" if isinstance(value, float) and key not in (
            "train_s", "final_loss") else str(value))
    console.print(table)
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result
