"""`memosys bench composition`: what combining cached memory blocks costs in answer quality.

Two blocks of the stable prefix: A = system + persona + rules, B = background memories.
For several queries the reference is the whole prompt read as text. Three ways to serve A+B
from caches are compared against it:

- **hierarchical** (what memosys does): A's cache, extended by prefilling B on top of it;
- **naive concat**: A's cache and B's cache built on its own, concatenated (B's keys carry
  positions 0.., clashing with A's, and B never attended to A) — the reference MemOS way;
- **RoPE re-positioned**: as naive, but B's keys rotated to positions len(A).. (fixes the
  positions; B still never attended to A).

Reported per method: answers identical to the reference, mean tokens generated before the
first difference, and the mean KL divergence of the first next-token distribution.
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from memosys.models.llm import common_prefix
from memosys.operation.prompt import DEFAULT_SYSTEM, render_section, stable_text
from memosys.operation.scheduler_worker import SYSTEM_OPEN
from memosys.types import MemoryItem, MemoryType

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

    from memosys.models.local_llm import LocalLLM

PERSONA = ["The user is Dana Okafor, a 34-year-old nurse who lives in Lyon.",
           "Dana is vegetarian and allergic to peanuts."]
RULES = ["Always answer in two sentences or fewer.", "Never recommend meat dishes.",
         "Address the user by her first name."]
BACKGROUND = [
    "Dana's sister Mia lives in Montreal and flies cargo planes.",
    "Dana's brother Tom runs a bakery in Porto.",
    "Dana is training for the Lyon half marathon in April.",
    "Dana's cat is called Pistache and is nine years old.",
    "Dana works night shifts at the Edouard Herriot hospital.",
    "Dana wants to visit Kyoto in the autumn.",
    "Dana plays the cello in an amateur orchestra on Tuesdays.",
    "Dana's best friend Ravi is a chef in Marseille.",
]
QUERIES = ["Where does my sister live?", "What should I cook tonight?",
           "Suggest a weekend activity for me.", "What is my cat's name?",
           "Who could help me bake bread?", "Plan my Tuesday evening.",
           "Which city should I visit next?", "What do you know about my job?"]


@dataclass
class MethodRow:
    method: str
    identical: int
    queries: int
    matched_tokens: float
    first_token_kl: float


def run_composition_bench(*, max_new_tokens: int = 24, json_file: Path | None = None,
                          out: Console | None = None, llm: LocalLLM | None = None,
                          threads: int | None = 1) -> list[MethodRow]:
    import torch

    out = out or Console()
    if threads is not None:
        torch.set_num_threads(threads)
    if llm is None:
        from memosys.models.llm import make_llm

        llm = make_llm("local")  # type: ignore[assignment]
    assert llm is not None
    llm.load()
    tok = llm.tokenizer
    def items(texts: list[str], kind: MemoryType) -> list[MemoryItem]:
        return [MemoryItem(cube_id="bench", text=t, memory_type=kind) for t in texts]

    sections = {"persona": items(PERSONA, MemoryType.PERSONA),
                "rules": items(RULES, MemoryType.RULE),
                "background": items(BACKGROUND, MemoryType.FACT)}
    a_text = (SYSTEM_OPEN + DEFAULT_SYSTEM + "\n" + render_section("persona", sections["persona"])
              + render_section("rules", sections["rules"]))
    b_text = render_section("background", sections["background"])
    a_ids = tok(a_text, add_special_tokens=False)["input_ids"]
    b_ids = tok(b_text, add_special_tokens=False)["input_ids"]
    n = len(a_ids) + len(b_ids)
    system = stable_text(DEFAULT_SYSTEM, sections)

    cache_a = llm.prefill(a_ids)
    hierarchical = _extend(llm, copy.deepcopy(cache_a), b_ids)
    cache_b = llm.prefill(b_ids)
    naive = _concat(cache_a, cache_b)
    shifted = _concat(cache_a, _shift(llm, cache_b, len(a_ids)))
    methods = {"hierarchical": hierarchical, "naive concat": naive, "RoPE re-positioned": shifted}

    stats: dict[str, dict[str, list[float]]] = {
        m: {"same": [], "matched": [], "kl": []} for m in methods}
    with out.status("comparing composition methods"):
        for query in QUERIES:
            ids = llm.apply_chat_template([{"role": "system", "content": system},
                                           {"role": "user", "content": query}])
            if ids[:n] != a_ids + b_ids:
                raise RuntimeError("blocks do not tokenize as a prefix of the prompt")
            ref = llm.generate(ids, max_new_tokens=max_new_tokens)
            ref_ids = tok(ref.text, add_special_tokens=False)["input_ids"]
            ref_logp = _first_logprobs(llm, None, ids)
            for name, cache in methods.items():
                got = llm.generate_from_cache(cache, n, ids[n:], max_new_tokens=max_new_tokens)
                got_ids = tok(got.text, add_special_tokens=False)["input_ids"]
                logp = _first_logprobs(llm, cache, ids[n:])
                stats[name]["same"].append(float(got.text == ref.text))
                stats[name]["matched"].append(float(common_prefix(ref_ids, got_ids)))
                stats[name]["kl"].append(float(torch.sum(ref_logp.exp() * (ref_logp - logp))))
    rows = [MethodRow(name, int(sum(s["same"])), len(QUERIES),
                      round(statistics.mean(s["matched"]), 2),
                      round(statistics.mean(s["kl"]), 5)) for name, s in stats.items()]
    table = Table(title=f"Composing cached blocks (A {len(a_ids)} + B {len(b_ids)} tokens, "
                        f"{len(QUERIES)} queries, {max_new_tokens} new tokens)")
    for col in ("method", "identical answers", "tokens before first difference",
                "first-token KL"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.method, f"{r.identical}/{r.queries}", f"{r.matched_tokens:.1f}",
                      f"{r.first_token_kl:.4f}")
    out.print(table)
    if json_file is not None:
        json_file.write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                         "a_tokens": len(a_ids), "b_tokens": len(b_ids)},
                                        indent=2) + "\n")
        out.print(f"wrote {json_file}")
    return rows


def _extend(llm: LocalLLM, cache: DynamicCache, ids: list[int]) -> DynamicCache:
    import torch

    with llm.lock, torch.no_grad():
        llm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
    return cache


def _concat(first: DynamicCache, second: DynamicCache) -> DynamicCache:
    import torch
    from transformers import DynamicCache

    out = DynamicCache()
    for i, (la, lb) in enumerate(zip(first.layers, second.layers, strict=True)):
        out.update(torch.cat([la.keys, lb.keys], dim=2), torch.cat([la.values, lb.values], dim=2),
                   i)
    return out


def _shift(llm: LocalLLM, cache: DynamicCache, offset: int) -> DynamicCache:
    """Rotate cached keys by ``offset`` positions: RoPE rotations compose additively."""
    import torch
    from transformers import DynamicCache
    from transformers.models.llama.modeling_llama import rotate_half

    rotary = llm.model.model.rotary_emb
    out = DynamicCache()
    for i, layer in enumerate(cache.layers):
        keys = layer.keys
        pos = torch.full((1, keys.shape[2]), offset, dtype=torch.long)
        cos, sin = rotary(keys, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        out.update(keys * cos + rotate_half(keys) * sin, layer.values.clone(), i)
    return out


def _first_logprobs(llm: LocalLLM, cache: DynamicCache | None, ids: list[int]) -> torch.Tensor:
    import torch

    work = copy.deepcopy(cache) if cache is not None else None
    with llm.lock, torch.no_grad():
        logits = llm.model(input_ids=torch.tensor([ids]), past_key_values=work,
                           use_cache=work is not None, logits_to_keep=1).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1)
