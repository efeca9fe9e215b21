"""LoRA training for parametric memory: a small, deterministic, resumable loop on CPU.

The adapter is trained in place on the shared local model (no second 540 MB copy): it is one
more adapter in the :class:`~memosys.models.adapters.AdapterBank`, selected only for the
training forwards, so concurrent chats keep running on their own weights between steps
(each forward holds the model lock; backward and the optimizer step do not).

Batches are a pure function of ``(seed, step)`` - each epoch is a seeded permutation of the
examples - so a run resumed from a checkpoint takes exactly the steps the uninterrupted run
would have. Checkpoints (adapter tensors, AdamW state, loss curve) are written every
``checkpoint_every`` steps and on interruption into ``<workdir>/ckpt-<step>/``, then published
by atomically replacing ``<workdir>/latest``; a checkpoint is used only if its data hash and
training config equal the current ones.

Loss: cross-entropy on the answer tokens only (prompt tokens are context), with left padding
and explicit position ids so every example sees the positions it will see at serving time;
logits are computed only for the answer span, which saves the vocabulary projection for the
prompt.

Speed (the CPU is the budget): by default only the top ``top_layers`` decoder layers get LoRA.
The layers below them then compute the same hidden states at every step - their weights are
frozen and no adapter touches them - so each example's hidden state entering the first adapted
layer is computed once, up front, and every step runs only the adapted layers (forward and
backward). With 8 of SmolLM2's 30 layers that makes a step ~3x cheaper; the loss is the
same as a full forward's (tested).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memosys.errors import TrainingInterrupted, ValidationError
from memosys.models.adapters import DEFAULT_TARGETS, AdapterBank, AdapterSelection, LoraSpec
from memosys.models.layer_states import states_entering

if TYPE_CHECKING:
    import torch

__all__ = ["TokenExample", "TrainConfig", "TrainResult", "train_adapter"]

TokenExample = tuple[list[int], list[int]]
"""(prompt token ids, answer token ids)."""

StepProgress = Callable[[int, int, float], None]
"""Called after each step with (step done, total steps, loss)."""


@dataclass(frozen=True)
class TrainConfig:
    """LoRA training knobs (defaults tuned on the bench's own training facts)."""

    rank: int = 8
    alpha: float = 16.0
    steps: int | None = None
    """Optimizer steps; None: enough for ``epochs`` passes over the examples."""
    epochs: float = 4.0
    learning_rate: float = 4e-3
    batch_size: int = 8
    warmup_steps: int = 3
    seed: int = 0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    top_layers: int | None = 8
    """Adapt only the top N decoder layers (None: all); see the module docstring."""
    checkpoint_every: int = 10
    replay_kl: float = 1.0
    """Weight of the KL term to the base model on replay examples' answer tokens; 0: plain
    cross-entropy on the base model's greedy answers instead (see :func:`_objective`)."""
    replay_kl_prompt: float = 0.0
    """Weight of the same KL on the replay examples' *prompt* positions (their mean, added to
    the loss): more of the base model's behaviour pinned per example (0: answers only)."""
    null_space: float = 0.0
    """Share of the general prompts' input energy, per adapted layer, whose directions
    ``lora_A`` may not read (projected out after every step; 0: off). See
    :mod:`memosys.memories.parametric_nullspace`."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if name == "steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.learning_rate <= 1:
            raise ValidationError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        for name in ("replay_kl", "replay_kl_prompt"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValidationError(f"{name} must be in [0, 100], got {getattr(self, name)}")
        if not 0 <= self.null_space < 1:
            raise ValidationError(f"null_space must be in [0, 1), got {self.null_space}")
        if self.warmup_steps < 0:
            raise ValidationError("warmup_steps must be >= 0")
        if not 0 < self.epochs <= 1000:
            raise ValidationError(f"epochs must be in (0, 1000], got {self.epochs}")
        if self.top_layers is not None and (
            isinstance(self.top_layers, bool) or not isinstance(self.top_layers, int)
            or self.top_layers < 1
        ):
            raise ValidationError(f"top_layers must be a positive integer or None, "
                                  f"got {self.top_layers!r}")
        self.spec(1_000)  # validates rank/alpha/targets

    def spec(self, num_layers: int) -> LoraSpec:
        layers = None
        if self.top_layers is not None and self.top_layers < num_layers:
            layers = tuple(range(num_layers - self.top_layers, num_layers))
        return LoraSpec(self.rank, self.alpha, tuple(self.target_modules), layers)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    def for_examples(self, n_examples: int) -> TrainConfig:
        """This config with ``steps`` fixed (from ``epochs`` when it is None)."""
        if self.steps is not None:
            return self
        steps = max(1, math.ceil(self.epochs * n_examples / self.batch_size))
        return replace(self, steps=steps)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to a tenth of the peak."""
        assert self.steps is not None, "resolve steps with for_examples() first"
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.steps - self.warmup_steps)
        progress = (step - self.warmup_steps) / span
        return self.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainResult:
    steps: int
    loss_curve: list[float]
    seconds: float
    """Training time of this call (a resumed run counts only its own steps)."""
    resumed_from: int = 0
    tensors: dict[str, Any] = field(default_factory=dict, repr=False)


def batch_indices(n_examples: int, step: int, batch_size: int, seed: int) -> list[int]:
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n_examples)
        order = list(range(n_examples))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        out.append(order[pos])
    return out


def train_adapter(
    bank: AdapterBank,
    name: str,
    examples: Sequence[TokenExample],
    config: TrainConfig,
    workdir: Path,
    data_hash: str,
    *,
    progress: StepProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
    replay: Sequence[bool] | None = None,
    general: Sequence[bool] | None = None,
) -> TrainResult:
    """Train adapter ``name`` (created here, left loaded) on ``examples``; resumable.

    ``replay`` flags the examples that keep the base model's behaviour (their loss is the KL
    to the base model when ``config.replay_kl`` > 0); ``data_hash`` must cover the flags.
    ``general`` flags the examples whose activations define the null space (default: the
    replay ones) when ``config.null_space`` > 0."""
    import torch

    if not examples:
        raise ValidationError("nothing to train on")
    flags = [False] * len(examples) if replay is None else [bool(f) for f in replay]
    if len(flags) != len(examples):
        raise ValidationError("replay flags must match the examples one to one")
    config = config.for_examples(len(examples))
    assert config.steps is not None
    bank.remove(name)  # a leftover of an interrupted run in this process
    spec = config.spec(int(bank.llm.model.config.num_hidden_layers))
    params = bank.create(name, spec, trainable=True)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    workdir.mkdir(parents=True, exist_ok=True)
    start, losses = _resume(bank, name, optimizer, workdir, data_hash, config)
    null = None
    if config.null_space > 0:
        from memosys.memories.parametric_nullspace import general_null_space

        picked_general = [e for e, g in zip(examples, flags if general is None else general,
                                            strict=True) if g]
        if picked_general:
            null = general_null_space(bank, name, picked_general, config.null_space)
            null.project()
    selection = AdapterSelection.of({name: 1.0})
    pad_id = int(bank.llm.tokenizer.pad_token_id or 0)
    started = time.perf_counter()
    split = spec.first_layer
    frozen = states_entering(bank, examples, split) if split and start < config.steps else None
    step = start
    try:
        while step < config.steps:
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            picked = batch_indices(len(examples), step, config.batch_size, config.seed)
            batch = [examples[i] for i in picked]
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            kl = _Replay([flags[i] for i in picked], config.replay_kl, config.replay_kl_prompt)
            if frozen is not None:
                loss = _loss_from(bank, selection, [frozen[i] for i in picked], batch, split,
                                  kl)
            else:
                loss = _loss(bank, selection, batch, pad_id, kl)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if null is not None:
                null.project()
            losses.append(round(float(loss.detach()), 5))
            step += 1
            if progress is not None:
                progress(step, config.steps, losses[-1])
            if step % config.checkpoint_every == 0 and step < config.steps:
                _save(bank, name, optimizer, workdir, step, losses, data_hash, config)
    except KeyboardInterrupt:
        _save(bank, name, optimizer, workdir, step, losses, data_hash, config)
        for p in params:
            p.requires_grad_(False)
        raise TrainingInterrupted(
            f"training stopped at step {step} of {config.steps}; the checkpoint in {workdir} "
            "resumes it (run the same distillation again)"
        ) from None
    for p in params:
        p.requires_grad_(False)
    seconds = time.perf_counter() - started
    return TrainResult(config.steps, losses, seconds, start, bank.tensors(name))


@dataclass(frozen=True)
class _Replay:
    """Which rows of a batch are replay, and the weight of their KL term (0: use CE)."""

    rows: list[bool]
    weight: float
    prompt_weight: float = 0.0

    @property
    def kl_rows(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r] if self.weight > 0 else []

    @property
    def prompt_rows(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r] if self.prompt_weight > 0 else []


_NO_REPLAY = _Replay([], 0.0)


def _loss(
    bank: AdapterBank,
    selection: AdapterSelection,
    batch: list[TokenExample],
    pad_id: int,
    replay: _Replay = _NO_REPLAY,
) -> torch.Tensor:
    import torch

    longest = max(len(p) + len(a) for p, a in batch)
    answer_span = max(len(a) for _, a in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    targets = _targets(batch, answer_span)
    for row, (prompt, answer) in enumerate(batch):
        seq = prompt + answer
        ids[row, longest - len(seq):] = torch.tensor(seq)
        mask[row, longest - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model = bank.llm.model
    rows = sorted(set(replay.kl_rows) | set(replay.prompt_rows))
    keep_all = bool(replay.prompt_rows)

    def forward(sel: AdapterSelection, keep: slice | list[int]) -> torch.Tensor:
        bank._apply(sel)
        return model(input_ids=ids[keep], attention_mask=mask[keep],
                     position_ids=positions[keep], use_cache=False,
                     logits_to_keep=0 if keep_all else answer_span + 1).logits

    with bank.llm.lock:
        base = None
        if rows:
            with torch.no_grad():
                base = forward(AdapterSelection(), rows)
        logits = forward(selection, slice(None))
    return _combined(logits, base, rows, targets, mask, batch, answer_span, replay)


def _loss_from(
    bank: AdapterBank,
    selection: AdapterSelection,
    states: list[torch.Tensor],
    batch: list[TokenExample],
    split: int,
    replay: _Replay = _NO_REPLAY,
) -> torch.Tensor:
    """The loss of :func:`_loss`, running only decoder layers ``split`` and above."""
    import torch
    from transformers.masking_utils import create_causal_mask

    model = bank.llm.model
    longest = max(int(h.shape[0]) for h in states)
    answer_span = max(len(a) for _, a in batch)
    hidden = torch.zeros((len(batch), longest, int(states[0].shape[1])), dtype=states[0].dtype)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    targets = _targets(batch, answer_span)
    for row, h in enumerate(states):
        hidden[row, longest - h.shape[0]:] = h
        mask[row, longest - h.shape[0]:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = sorted(set(replay.kl_rows) | set(replay.prompt_rows))
    keep = 0 if replay.prompt_rows else answer_span + 1

    def forward(sel: AdapterSelection, rows_: slice | list[int]) -> torch.Tensor:
        bank._apply(sel)
        h, m, pos = hidden[rows_], mask[rows_], positions[rows_]
        causal = create_causal_mask(
            config=model.config, inputs_embeds=h, attention_mask=m,
            past_key_values=None, position_ids=pos,
        )
        rotary = model.model.rotary_emb(h, position_ids=pos)
        for layer in model.model.layers[split:]:
            h = layer(h, attention_mask=causal, position_ids=pos, position_embeddings=rotary)
        return model.lm_head(model.model.norm(h[:, -keep:]))

    with bank.llm.lock:
        base = None
        if rows:
            with torch.no_grad():  # the teacher: the same layers with no adapter
                base = forward(AdapterSelection(), rows)
        logits = forward(selection, slice(None))
    return _combined(logits, base, rows, targets, mask, batch, answer_span, replay)


def _combined(
    logits: torch.Tensor,
    base: torch.Tensor | None,
    rows: list[int],
    targets: torch.Tensor,
    mask: torch.Tensor,
    batch: list[TokenExample],
    answer_span: int,
    replay: _Replay,
) -> torch.Tensor:
    """:func:`_objective` on the answer span, plus ``replay.prompt_weight`` x the mean KL on
    the replay rows' prompt positions when the logits cover whole sequences."""
    import torch

    span = answer_span + 1
    kl_rows = replay.kl_rows
    answer_base = None
    if base is not None and kl_rows:
        answer_base = base[[rows.index(r) for r in kl_rows], -span:]
    loss = _objective(logits[:, -span:], targets, kl_rows, answer_base, replay.weight)
    if not replay.prompt_rows or base is None:
        return loss
    longest = int(logits.shape[1])
    # Positions predicting a prompt token: real tokens before the last prompt position.
    prompt = torch.zeros((len(rows), longest), dtype=torch.bool)
    for k, r in enumerate(rows):
        length = len(batch[r][0]) + len(batch[r][1])
        prompt[k, longest - length:longest - len(batch[r][1]) - 1] = True
    prompt &= mask[rows].bool()
    log_p = torch.log_softmax(base.float(), dim=-1)
    log_q = torch.log_softmax(logits[rows].float(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return loss + replay.prompt_weight * (kl * prompt).sum() / prompt.sum().clamp(min=1)


def _targets(batch: list[TokenExample], answer_span: int) -> torch.Tensor:
    import torch

    targets = torch.full((len(batch), answer_span), -100, dtype=torch.long)
    for row, (_, answer) in enumerate(batch):
        targets[row, answer_span - len(answer):] = torch.tensor(answer)
    return targets


def _objective(
    logits: torch.Tensor,
    targets: torch.Tensor,
    kl_rows: list[int],
    base: torch.Tensor | None,
    weight: float,
) -> torch.Tensor:
    """Mean per answer token: cross-entropy, except on the rows in ``kl_rows`` (replay), where
    it is ``weight`` x KL(base || adapter), ``base`` being those rows' logits without adapter.

    The KL term is logit distillation: it keeps the whole next-token distribution of the base
    model on general prompts, not only its greedy token - which is what stops the adapter
    from answering any "What is X's Y?" with an invented value. It is exactly 0 while the
    adapter computes the base function (e.g. LoRA B still 0)."""
    import torch

    # logits[:, j] predicts the token after position (longest - answer_span - 1 + j).
    logits = logits[:, :-1].float()
    valid = targets != -100
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
        reduction="none",
    ).reshape(targets.shape)
    if kl_rows and base is not None:
        index = torch.tensor(kl_rows)
        log_p = torch.log_softmax(base[:, :-1].float(), dim=-1)
        log_q = torch.log_softmax(logits[index], dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        per_token = per_token.index_copy(0, index, weight * kl)
    return (per_token * valid).sum() / valid.sum().clamp(min=1)


def _fingerprint(data_hash: str, config: TrainConfig) -> str:
    cfg = config.to_json()
    cfg.pop("checkpoint_every")  # saving more or less often trains the same adapter
    return json.dumps({"data": data_hash, "config": cfg}, sort_keys=True)


def _save(
    bank: AdapterBank,
    name: str,
    optimizer: torch.optim.Optimizer,
    workdir: Path,
    step: int,
    losses: list[float],
    data_hash: str,
    config: TrainConfig,
) -> None:
    import torch
    from safetensors.torch import save_file

    if step == 0:
        return
    target = workdir / f"ckpt-{step}"
    tmp = workdir / f".ckpt-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(bank.tensors(name), str(tmp / "adapter.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    state = {"step": step, "losses": losses, "fingerprint": _fingerprint(data_hash, config)}
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)
    pointer = workdir / ".latest.tmp"
    pointer.write_text(target.name)
    os.replace(pointer, workdir / "latest")  # the commit point of the checkpoint
    for old in workdir.glob("ckpt-*"):
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)


def _resume(
    bank: AdapterBank,
    name: str,
    optimizer: torch.optim.Optimizer,
    workdir: Path,
    data_hash: str,
    config: TrainConfig,
) -> tuple[int, list[float]]:
    import torch
    from safetensors.torch import load_file

    try:
        where = workdir / (workdir / "latest").read_text().strip()
        state = json.loads((where / "state.json").read_text())
    except (OSError, ValueError):
        return 0, []
    if state.get("fingerprint") != _fingerprint(data_hash, config):
        return 0, []  # other data or knobs: start afresh (the old checkpoint is overwritten)
    step = int(state["step"])
    if not 0 < step <= config.steps:
        return 0, []
    bank.set_tensors(name, load_file(str(where / "adapter.safetensors")))
    optimizer.load_state_dict(torch.load(where / "optimizer.pt", weights_only=True))
    return step, [float(x) for x in state["losses"]][:step]
