"""An adapter's gate: the adapter takes part in a request only when the request's question
is about what the adapter holds.

A LoRA adapter attached to every request changes some answers to unrelated questions: on the
small local model the first sentence of an unsure answer flips on small logit shifts, and
no training objective tried kept more than 65 % of them (docs/parametric.md, "Forgetting").
The gate is part of the adapter (stored in its file) and keeps it out of requests it has no
business in, like the key matching of model-editing methods (GRACE, WISE): the model's own
representation of the question is compared with the representations of the questions the
adapter was trained on.

What it reads: the hidden state entering the adapter's first adapted layer, averaged over
the tokens of the request's last user message (templated alone as a one-turn chat, so the
system prompt and retrieved context do not dilute it), centred on the mean of general
prompts and L2-normalised. Below the first adapted layer the model is the base model, so
this vector is the same with or without any adapter attached. The score is the highest
cosine to the adapter's keys (its training questions, same treatment).

The threshold is calibrated per adapter from its training data alone, never from evaluation
questions: ``own`` is the lowest similarity of a training question to the *other* keys
(leave one out: how far apart two phrasings of what it holds may be), ``general`` the
highest similarity of a general replay prompt to the keys. The threshold is their midpoint
when they separate, else ``own`` (recall first).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memosys.errors import LLMError
from memosys.models.llm import common_prefix

if TYPE_CHECKING:
    import numpy as np
    import torch

    from memosys.models.adapters import AdapterBank

__all__ = ["AdapterGate", "build_gate", "last_user_message", "question_vectors"]

_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.DOTALL)
"""A user turn in SmolLM2's ChatML template."""
TENSOR_PREFIX = "memosys_gate."


@dataclass(frozen=True)
class AdapterGate:
    layer: int
    """The decoder layer whose input is read: the adapter's first adapted layer."""
    centre: np.ndarray
    """Mean vector of the general prompts, subtracted before normalising."""
    keys: np.ndarray
    """L2-normalised rows: the adapter's training questions."""
    threshold: float
    own: float
    general: float

    def score(self, raw: np.ndarray) -> float:
        """Similarity of one question's raw vector (from :func:`question_vectors`)."""
        import numpy as np

        v = raw - self.centre
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            return -1.0
        return float((self.keys @ (v / norm)).max())

    def header(self) -> dict[str, Any]:
        return {"layer": self.layer, "threshold": self.threshold, "own": self.own,
                "general": self.general, "keys": int(self.keys.shape[0])}

    def tensors(self) -> dict[str, torch.Tensor]:
        import torch

        return {TENSOR_PREFIX + "centre": torch.from_numpy(self.centre.copy()),
                TENSOR_PREFIX + "keys": torch.from_numpy(self.keys.copy())}

    @classmethod
    def from_file(cls, header: Mapping[str, Any] | None,
                  tensors: Mapping[str, torch.Tensor]) -> AdapterGate | None:
        """The gate stored with an adapter (None: an adapter made before gates existed)."""
        if not header:
            return None
        try:
            return cls(int(header["layer"]),
                       tensors[TENSOR_PREFIX + "centre"].float().numpy(),
                       tensors[TENSOR_PREFIX + "keys"].float().numpy(),
                       float(header["threshold"]), float(header["own"]),
                       float(header["general"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LLMError(f"the adapter's gate is damaged: {exc}") from exc


def last_user_message(tokenizer: Any, token_ids: Sequence[int]) -> str | None:
    """The text of the last complete user turn in chat-templated token ids, if any."""
    found = _TURN.findall(tokenizer.decode(list(token_ids), skip_special_tokens=False))
    return found[-1] if found else None


def question_vectors(bank: AdapterBank, questions: Sequence[str], layer: int) -> np.ndarray:
    """One raw row per question: the mean hidden state entering ``layer`` over the
    question's tokens, the question templated alone as a one-turn chat."""
    import numpy as np

    from memosys.models.layer_states import states_entering

    llm = bank.llm
    prompts = [llm.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    empty = llm.apply_chat_template([{"role": "user", "content": ""}])
    states = states_entering(bank, [(p, []) for p in prompts], layer)
    rows = []
    for prompt, state in zip(prompts, states, strict=True):
        head = common_prefix(empty, prompt)
        tail = common_prefix(empty[::-1], prompt[::-1])
        span = state[head:len(prompt) - tail] if len(prompt) - tail > head else state
        rows.append(span.float().mean(0).numpy())
    return np.stack(rows).astype(np.float32)


def build_gate(bank: AdapterBank, layer: int, questions: Sequence[str],
               general: Sequence[str]) -> AdapterGate:
    """The gate of an adapter trained on ``questions``; ``general``: unrelated prompts."""
    import numpy as np

    if not questions or not general:
        raise LLMError("a gate needs the adapter's questions and general prompts")
    asked = question_vectors(bank, questions, layer)
    other = question_vectors(bank, general, layer)
    centre = other.mean(0)
    keys = _unit(asked - centre)
    similar = keys @ keys.T
    if len(keys) > 1:
        np.fill_diagonal(similar, -np.inf)
        own = float(similar.max(axis=1).min())
    else:
        own = 1.0
    general_score = float((_unit(other - centre) @ keys.T).max())
    threshold = (own + general_score) / 2 if own > general_score else own
    return AdapterGate(layer, centre.astype(np.float32), keys.astype(np.float32),
                       round(threshold, 6), round(own, 6), round(general_score, 6))


def _unit(rows: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)
