"""The MemScheduler's parametric form: distilled memories answered from the weights.

For one chat call on the local model, :func:`parametric_forms` looks up the *ready* adapters
of the mounted cubes. A memory the scheduler would put in the prompt - pinned, promoted or
retrieved as relevant - that a ready adapter holds is instead given form ``parametric``: its
text stays out of the prompt and that adapter is attached to the call. Ready means distilled
from exactly the memory's current version (any change or deletion makes the adapter stale,
see :mod:`memosys.memories.parametric`), so the weights hold what the text says; stable and
frequent is what got it distilled (``memosys distil --min-uses``). An adapter none of whose
memories is relevant to the call is not attached, and neither is one whose gate stays closed
for the call's question (:mod:`memosys.models.adapter_gate`): its memories then go in the
prompt as plaintext, as if it did not exist, so a memory is never in neither place.

Prefix KV caches hold base-model activations, so a call with adapters attached never
continues from one (the scheduler's chat falls back to the full prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memosys.memories.parametric_records import READY
from memosys.models.adapters import AdapterSelection, bank_for

if TYPE_CHECKING:
    from memosys.memories.parametric import ParametricMemory
    from memosys.memories.parametric_records import AdapterRecord
    from memosys.models.local_llm import LocalLLM
    from memosys.system import MemOS
    from memosys.types import MemoryItem

__all__ = ["ParametricForms", "adapters_for_call", "parametric_forms"]


@dataclass
class ParametricForms:
    """Which memories of one call the ready adapters hold, and which adapters it uses."""

    memory: ParametricMemory
    holders: dict[str, AdapterRecord]
    """memory id -> the ready adapter holding it."""
    query: str
    used: dict[str, AdapterRecord] = field(default_factory=dict)
    _open: dict[str, bool] = field(default_factory=dict)

    def take(self, item: MemoryItem) -> str | None:
        """The reason for form ``parametric`` if an adapter holds ``item`` and its gate
        opens for the query (and use it)."""
        record = self.holders.get(item.id)
        if record is None:
            return None
        if record.id not in self._open:
            self._open[record.id] = self.memory.opens(record, self.query)
        if not self._open[record.id]:
            return None
        self.used[record.id] = record
        return (f"distilled into adapter {record.name} ({record.id}, ready): answered from "
                "the weights, not in the prompt")

    def selection(self) -> AdapterSelection | None:
        """The adapters taken, their gates already consulted."""
        if not self.used:
            return None
        return self.memory.load_selection(list(self.used.values()), gated=False)


def parametric_forms(
    mos: MemOS, cube_ids: Sequence[str], local_llm: LocalLLM | None, query: str
) -> ParametricForms | None:
    """The parametric options of one call (None: remote model, or no ready adapter)."""
    if local_llm is None:
        return None
    memory = mos.parametric
    if memory.llm is not local_llm:
        return None  # adapters are bound to the runtime's model; another model gets none
    holders: dict[str, AdapterRecord] = {}
    for cube in cube_ids:
        for record in memory.records(cube):
            if record.status == READY:
                holders.update({s["id"]: record for s in record.sources})
    return ParametricForms(memory, holders, query) if holders else None


def adapters_for_call(
    local_llm: LocalLLM, selection: AdapterSelection | None
) -> AbstractContextManager[AdapterSelection]:
    """Context manager: requests started inside run with ``selection`` (None: base model)."""
    return bank_for(local_llm).using(selection)
