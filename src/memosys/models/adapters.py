"""LoRA adapters on the local model, chosen per request.

An :class:`AdapterBank` holds any number of named LoRA adapters injected (with ``peft``) into
one :class:`~memosys.models.local_llm.LocalLLM`'s shared model. Nothing is switched globally:
a request names the adapters it runs with, and their scales, by generating inside
:meth:`AdapterBank.using`; the selection is read when the request starts and re-applied under
the model lock before *every* forward (prefill or decode step), so two requests interleaving
step by step on different adapters - user A's and user B's - each only ever see their own.
A request started outside ``using`` runs on the base weights: every adapter disabled, which is
bit-for-bit the base model (peft's LoRA layer then calls the original linear layer only).

Adapters are plain tensors (``lora_A``/``lora_B`` per adapted linear layer, keyed by module
path) so they can be stored anywhere (memosys keeps them as safetensors, see
:mod:`memosys.memories.parametric`). peft is pinned (0.21.2): per-request activation sets the
LoRA layers' active adapter list, disable flag and scaling directly instead of peft's
``set_adapter``, which would also flip ``requires_grad`` of an adapter being trained meanwhile.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memosys.errors import LLMError, ValidationError
from memosys.models.local_llm import REQUEST_WEIGHTS, LocalLLM

if TYPE_CHECKING:
    import torch

    from memosys.models.adapter_gate import AdapterGate

__all__ = ["AdapterBank", "AdapterSelection", "LoraSpec", "bank_for"]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_SCALE = 4.0


@dataclass(frozen=True)
class LoraSpec:
    """The shape of one adapter: rank, alpha, which linear layers and which decoder layers."""

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    layers: tuple[int, ...] | None = None
    """Decoder layer indices to adapt (``None``: all)."""

    def __post_init__(self) -> None:
        rank = self.rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= 256:
            raise ValidationError(f"LoRA rank must be an integer in 1..256, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValidationError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not self.target_modules:
            raise ValidationError("LoRA needs at least one target module")

    @property
    def first_layer(self) -> int:
        """The lowest adapted decoder layer: below it the model is the base model."""
        return min(self.layers) if self.layers else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "layers": None if self.layers is None else list(self.layers),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoraSpec:
        layers = data.get("layers")
        return cls(
            rank=int(data["rank"]),
            alpha=float(data["alpha"]),
            target_modules=tuple(data["target_modules"]),
            layers=None if layers is None else tuple(int(i) for i in layers),
        )


@dataclass(frozen=True)
class AdapterSelection:
    """Adapters (by name) and the scale each runs at for one request; empty: base model."""

    scales: tuple[tuple[str, float], ...] = field(default=())
    gated: bool = True
    """Whether the adapters' gates still decide (False: exactly these adapters, as when the
    gates were already consulted, or to measure an adapter without its gate)."""

    @classmethod
    def of(cls, adapters: Mapping[str, float] | None, *, gated: bool = True
           ) -> AdapterSelection:
        out: dict[str, float] = {}
        for name, scale in (adapters or {}).items():
            if not isinstance(scale, int | float) or not 0.0 <= float(scale) <= MAX_SCALE:
                raise ValidationError(
                    f"adapter scale must be a number in 0..{MAX_SCALE}, got {scale!r}"
                )
            if float(scale) > 0:  # scale 0 is the same as not attaching it
                out[name] = float(scale)
        return cls(tuple(sorted(out.items())), gated)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.scales)

    def __bool__(self) -> bool:
        return bool(self.scales)


class AdapterBank:
    """The adapters loaded into one :class:`LocalLLM` (get it with :func:`bank_for`)."""

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm
        self._specs: dict[str, LoraSpec] = {}
        self._gates: dict[str, AdapterGate] = {}
        self._applied: AdapterSelection | None = None
        self._lock = threading.RLock()
        llm.forward_hook = self._apply
        llm.request_hook = self._gate_request

    # ------------------------------------------------------------------ loading

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def spec(self, name: str) -> LoraSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise LLMError(f"no adapter {name!r} is loaded") from None

    def create(self, name: str, spec: LoraSpec, *, trainable: bool = False) -> list[torch.Tensor]:
        """Inject a fresh adapter (B = 0, so it starts as a no-op); returns its parameters."""
        from peft import LoraConfig, inject_adapter_in_model

        _check_name(name)
        with self.llm.lock, self._lock:
            if name in self._specs:
                raise LLMError(f"adapter {name!r} is already loaded")
            model = self.llm.model
            trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
            config = LoraConfig(
                r=spec.rank,
                lora_alpha=spec.alpha,
                lora_dropout=0.0,
                target_modules=list(spec.target_modules),
                layers_to_transform=None if spec.layers is None else list(spec.layers),
                bias="none",
            )
            try:
                with warnings.catch_warnings():
                    # "Already found a peft_config": several adapters per model is the point.
                    warnings.filterwarnings("ignore", "Already found a `peft_config`")
                    inject_adapter_in_model(config, model, adapter_name=name)
            except ValueError as exc:  # e.g. a target module the model does not have
                raise LLMError(f"cannot create adapter {name!r}: {exc}") from exc
            self._specs[name] = spec
            self._applied = None  # new layers: re-apply the selection on the next forward
            params = []
            for pname, param in model.named_parameters():
                mine = _owned_by(pname, name)
                if mine:
                    params.append(param)
                # peft's injection marks only its new adapter trainable: base weights stay
                # frozen (nothing here trains them), other adapters keep their state.
                param.requires_grad_(
                    trainable if mine else ("lora_" in pname and pname in trainable_before)
                )
            if not params:
                self._remove_locked(name)
                raise LLMError(f"adapter {name!r} matched no layers of the model")
            return params

    def load(self, name: str, spec: LoraSpec, tensors: Mapping[str, torch.Tensor]) -> None:
        """Inject adapter ``name`` with the given weights (as returned by :meth:`tensors`)."""
        with self.llm.lock, self._lock:
            self.create(name, spec)
            try:
                self._assign(name, tensors)
            except Exception:
                self._remove_locked(name)
                raise

    def set_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        with self.llm.lock, self._lock:
            self.spec(name)
            self._assign(name, tensors)

    def _assign(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        import torch

        own = self._parameters(name)
        if set(own) != set(tensors):
            missing = sorted(set(own) - set(tensors))[:3]
            extra = sorted(set(tensors) - set(own))[:3]
            raise LLMError(
                f"adapter {name!r} does not fit this model: missing {missing}, unexpected {extra}"
            )
        with torch.no_grad():
            for key, param in own.items():
                value = tensors[key]
                if tuple(value.shape) != tuple(param.shape):
                    raise LLMError(
                        f"adapter {name!r}: {key} has shape {tuple(value.shape)}, "
                        f"expected {tuple(param.shape)}"
                    )
                param.copy_(value.to(param.dtype))

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A detached copy of the adapter's weights, keyed ``<module>.lora_A.weight`` etc."""
        with self._lock:
            self.spec(name)
            return {k: p.detach().clone().contiguous() for k, p in self._parameters(name).items()}

    def _parameters(self, name: str) -> dict[str, torch.Tensor]:
        marker_a, marker_b = f".lora_A.{name}.", f".lora_B.{name}."
        out = {}
        for pname, param in self.llm.model.named_parameters():
            if marker_a in pname or marker_b in pname:
                out[pname.replace(f".{name}.", ".")] = param
        return out

    def remove(self, name: str) -> None:
        """Unload an adapter: no request can use it any more."""
        with self.llm.lock, self._lock:
            if name in self._specs:
                self._remove_locked(name)

    def _remove_locked(self, name: str) -> None:
        from peft.tuners.lora import LoraLayer

        with warnings.catch_warnings():
            # peft re-activates another adapter; the next forward applies the selection anyway.
            warnings.filterwarnings("ignore", "Adapter .* was active which is now deleted")
            for module in self.llm.model.modules():
                if isinstance(module, LoraLayer) and name in module.lora_A:
                    module.delete_adapter(name)
        peft_config = getattr(self.llm.model, "peft_config", None)
        if isinstance(peft_config, dict):
            peft_config.pop(name, None)
        self._specs.pop(name, None)
        self._gates.pop(name, None)
        self._applied = None

    # ------------------------------------------------------------------ gates

    def set_gate(self, name: str, gate: AdapterGate | None) -> None:
        """Give a loaded adapter its gate (None: ungated, in every request it is selected)."""
        with self._lock:
            self.spec(name)
            if gate is None:
                self._gates.pop(name, None)
            else:
                self._gates[name] = gate

    def gate_scores(self, names: Sequence[str], question: str) -> dict[str, tuple[float, float]]:
        """(score, threshold) of each gated adapter in ``names`` for one question."""
        from memosys.models.adapter_gate import question_vectors

        with self._lock:
            gates = {n: self._gates[n] for n in names if n in self._gates}
        vectors: dict[int, Any] = {}
        out = {}
        for name, gate in gates.items():
            if gate.layer not in vectors:
                vectors[gate.layer] = question_vectors(self, [question], gate.layer)[0]
            out[name] = (gate.score(vectors[gate.layer]), gate.threshold)
        return out

    def open_for(self, selection: AdapterSelection, question: str | None) -> AdapterSelection:
        """The selection with every adapter whose gate stays closed for ``question`` left
        out (no question: nothing to compare, so the selection as it is)."""
        if not selection.gated or question is None:
            return AdapterSelection(selection.scales, gated=False)
        scores = self.gate_scores(selection.names, question)
        kept = tuple((n, s) for n, s in selection.scales
                     if n not in scores or scores[n][0] >= scores[n][1])
        return AdapterSelection(kept, gated=False)

    def _gate_request(self, weights: object | None, token_ids: Sequence[int]) -> object | None:
        """The model's request hook: a request's gates are decided once, from its last
        user message, before its first forward."""
        if not isinstance(weights, AdapterSelection) or not weights or not weights.gated:
            return weights
        with self._lock:
            if not any(n in self._gates for n in weights.names):
                return weights
        from memosys.models.adapter_gate import last_user_message

        return self.open_for(weights, last_user_message(self.llm.tokenizer, token_ids))

    # ------------------------------------------------------------------ per request

    @contextmanager
    def using(
        self, adapters: AdapterSelection | Mapping[str, float] | None
    ) -> Iterator[AdapterSelection]:
        """Requests started inside run with these adapters (name -> scale) and no others."""
        selection = adapters if isinstance(adapters, AdapterSelection) else (
            AdapterSelection.of(adapters)
        )
        for name in selection.names:
            self.spec(name)
        token = REQUEST_WEIGHTS.set(selection)
        try:
            yield selection
        finally:
            REQUEST_WEIGHTS.reset(token)

    def _apply(self, weights: object | None) -> None:
        """The model's forward hook (runs under the model lock)."""
        from peft.tuners.lora import LoraLayer

        selection = weights if isinstance(weights, AdapterSelection) else AdapterSelection()
        with self._lock:
            if selection == self._applied:
                return
            missing = [n for n in selection.names if n not in self._specs]
            if missing:
                # Removed (retired, stale) after the request started: never silently run it
                # on other weights.
                raise LLMError(f"adapter {missing[0]!r} was unloaded during the request")
            names = list(selection.names)
            for module in self.llm.model.modules():
                if not isinstance(module, LoraLayer):
                    continue
                present = [n for n in names if n in module.lora_A]
                module._disable_adapters = not present
                module._active_adapter = present
                for n, scale in selection.scales:
                    if n in module.lora_A:
                        module.scaling[n] = scale * module.lora_alpha[n] / module.r[n]
            self._applied = selection


def _owned_by(param_name: str, adapter: str) -> bool:
    return f".lora_A.{adapter}." in param_name or f".lora_B.{adapter}." in param_name


def _check_name(name: str) -> None:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValidationError(f"adapter name {name!r}: letters, digits, '-' and '_' only")


_BANKS: weakref.WeakKeyDictionary[LocalLLM, AdapterBank] = weakref.WeakKeyDictionary()
_BANKS_LOCK = threading.Lock()


def bank_for(llm: LocalLLM) -> AdapterBank:
    """The one adapter bank of ``llm`` (created on first use)."""
    if not isinstance(llm, LocalLLM):
        raise LLMError(f"LoRA adapters need the local model, not {getattr(llm, 'id', llm)!r}")
    with _BANKS_LOCK:
        bank = _BANKS.get(llm)
        if bank is None:
            bank = _BANKS[llm] = AdapterBank(llm)
        return bank
