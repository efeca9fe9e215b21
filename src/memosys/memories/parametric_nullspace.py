"""Null-space constrained LoRA: the adapter may not read what general prompts activate.

A LoRA delta on a linear layer is ``B A x``: it changes the output for every input ``x`` that
``A`` does not annihilate. KL replay pulls the delta back only on the replay tokens it sees;
this constrains it by construction. The inputs each adapted layer receives on general prompts
(the replay examples, base weights) span a subspace; its top principal directions - those
holding ``energy`` of the inputs' second moment - are computed once before training, and after
every optimizer step each ``lora_A`` is projected onto their orthogonal complement
(``A <- A - (A U) U^T``). General inputs then (mostly) lie where the adapter reads nothing,
so it cannot change their outputs, while the directions rare in general text - those an
invented name or value occupies - stay free to carry the facts. This is the null-space idea of
knowledge-editing work (AlphaEdit) applied to a LoRA adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memosys.models.adapters import AdapterBank, AdapterSelection

if TYPE_CHECKING:
    import torch

__all__ = ["NullSpace", "general_null_space"]

TokenExample = tuple[list[int], list[int]]


class NullSpace:
    """Per adapted layer, the ``lora_A`` weight and the protected input directions ``U``."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.pairs = pairs

    @property
    def protected(self) -> list[int]:
        return [int(u.shape[1]) for _, u in self.pairs]

    def project(self) -> None:
        """Remove from every ``lora_A`` what reads the protected directions."""
        import torch

        with torch.no_grad():
            for weight, u in self.pairs:
                weight.sub_((weight @ u) @ u.T)


def general_null_space(
    bank: AdapterBank, name: str, examples: Sequence[TokenExample], energy: float
) -> NullSpace:
    """The protected directions of adapter ``name``'s layers, from ``examples`` (general
    prompts with the base model's answers) run through the base model one at a time."""
    import torch
    from peft.tuners.lora import LoraLayer

    model = bank.llm.model
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and name in m.lora_A]
    moments: dict[int, torch.Tensor] = {}

    def hook_for(key: int) -> Any:
        def grab(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            moments[key] = moments.get(key, 0) + x.T @ x
        return grab

    hooks = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(layers)]
    try:
        with bank.llm.lock, torch.no_grad():
            bank._apply(AdapterSelection())
            for prompt, answer in examples:
                model(input_ids=torch.tensor([prompt + answer]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    pairs = []
    for i, module in enumerate(layers):
        weight = module.lora_A[name].weight
        values, vectors = torch.linalg.eigh(moments[i])
        values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
        share = values.cumsum(0) / values.sum().clamp(min=1e-30)
        k = int((share < energy).sum()) + 1
        pairs.append((weight, vectors[:, :k].to(weight.dtype).contiguous()))
    return NullSpace(pairs)
