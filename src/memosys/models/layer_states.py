"""Hidden states entering one decoder layer, computed on the base weights.

Below the first layer an adapter touches, the model is the base model whatever adapters are
attached, so these states are the same with or without them: LoRA training computes them
once per example (the frozen prefix, :mod:`memosys.memories.parametric_train`) and an
adapter's gate reads them to decide whether a request is about what the adapter holds
(:mod:`memosys.models.adapter_gate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memosys.models.adapters import AdapterSelection

if TYPE_CHECKING:
    import torch

    from memosys.models.adapters import AdapterBank

__all__ = ["states_entering"]


class _Reached(Exception):
    """Raised by a hook to stop a forward once the wanted layer input is captured."""


def states_entering(
    bank: AdapterBank, examples: Sequence[tuple[list[int], list[int]]], layer: int,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """Each (prompt, answer) token sequence's hidden state entering decoder layer ``layer``
    (every adapter deselected), one ``[tokens, hidden]`` tensor per example.

    Batched with left padding (the real tokens' states equal the unpadded ones up to float
    rounding), and each forward stops at ``layer``: the layers above are not needed."""
    import torch

    model = bank.llm.model
    captured: list[torch.Tensor] = []

    def grab(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Reached

    out: list[torch.Tensor] = []
    for start in range(0, len(examples), batch_size):
        chunk = [p + a for p, a in examples[start:start + batch_size]]
        longest = max(len(seq) for seq in chunk)
        ids = torch.zeros((len(chunk), longest), dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, longest - len(seq):] = torch.tensor(seq)
            mask[row, longest - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        captured.clear()
        with bank.llm.lock, torch.no_grad():
            bank._apply(AdapterSelection())
            hook = model.model.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
            try:
                model.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            use_cache=False)
            except _Reached:
                pass
            finally:
                hook.remove()
        hidden = captured[0]
        for row, seq in enumerate(chunk):
            out.append(hidden[row, longest - len(seq):].clone())
    return out
