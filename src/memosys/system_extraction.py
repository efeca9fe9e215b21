"""Per-cube extraction rules in the runtime: stored, checked on every write, used by MemReader.

* **Storage** — the config (memosys.interface.reader_rules.ExtractionConfig) lives in the
  cube's governance policy document under ``"extraction"`` (both backends keep it in
  ``gov_policies``), written with the store's atomic ``update_policy`` so a concurrent
  change of another policy field is never lost. Every change bumps ``version`` (optional
  ``expected_version`` refuses a stale edit with ConflictError) and is audited
  (``set_extraction_rules``: version, sha256 of the config, rule ids, category names).
  Changing rules needs the ``share`` permission on the cube (its owner with role owner or
  admin, an admin, or a grant that includes share), like the cube's other policies.
* **Enforcement** — :func:`enforce` is called from ``Access.label``, the one function every
  write path goes through before it is committed (``MemOS.add``/``add_items`` and so REST,
  MCP and the client, ``update``/``rollback`` when the text changes, archive import). A
  memory a deny rule matches is refused whole with RefusedByRuleError (HTTP 422) and
  nothing of the call is written; raw input (``episode`` and ``document`` memories, i.e.
  conversation turns and document chunks) instead has the matching sentences withheld —
  replaced by ``[withheld by rule <id>]`` — and the rest is stored, so a conversation keeps
  what it may keep. Either way the audit log gets an ``extraction.refused`` entry (outcome
  ``denied``) naming the rule and the sha256 of the refused text, never the text.
* **MemReader** — :func:`screen` drops extracted candidates a deny rule matches (a
  ``REFUSED`` decision, audited), adds candidates for sentences an allow rule matches that
  the extractor missed, and tags each kept candidate with its categories; :func:`guided`
  gives a model-backed extractor the cube's instructions, rules and categories for its
  prompt.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memosys.errors import ArchiveError, ConflictError, RefusedByRuleError, ValidationError
from memosys.interface.reader_rules import (
    CATEGORY_TAG,
    ExtractionConfig,
    Rule,
    prompt_guidance,
    text_hash,
)
from memosys.types import MemoryItem, MemoryType, utcnow

if TYPE_CHECKING:
    from memosys.access import Access
    from memosys.interface.extract import Candidate, Extractor, Turn
    from memosys.interface.reconcile import Decision
    from memosys.system import MemOS

POLICY_KEY = "extraction"
AUDIT_OP = "extraction.refused"
RAW_TYPES = (MemoryType.EPISODE, MemoryType.DOCUMENT)
_EMPTY = ExtractionConfig()
_PARSED: dict[str, ExtractionConfig] = {}
"""Parsed configs by their stored JSON: regexes are compiled once, not on every write."""


def load(mos: MemOS, cube_id: str) -> ExtractionConfig:
    """The cube's config as stored (no permission check: callers have done theirs)."""
    raw = mos.vault.governance.get_policy(cube_id).get(POLICY_KEY)
    if not raw:
        return _EMPTY
    key = json.dumps(raw, sort_keys=True)
    found = _PARSED.get(key)
    if found is None:
        if len(_PARSED) > 256:
            _PARSED.clear()
        found = _PARSED[key] = ExtractionConfig.from_dict(raw)
    return found


# --- the API (MemOS delegates here) -----------------------------------------------------------
def get_rules(mos: MemOS, cube: str) -> dict[str, Any]:
    found = mos._cube_for(cube, "read", "extraction_rules")
    return {"cube_id": found.id, **load(mos, found.id).as_dict()}


def set_rules(
    mos: MemOS,
    cube: str,
    *,
    categories: Sequence[Any] | None = None,
    rules: Sequence[Any] | None = None,
    instructions: str | None = None,
    threshold: float | None = None,
    expected_version: int | None = None,
) -> dict[str, Any]:
    """Replace the given parts of the cube's config (None keeps a part as it is)."""
    found = mos._cube_for(cube, "share", "set_extraction_rules")
    changed = {k: v for k, v in (("categories", categories), ("rules", rules),
                                 ("instructions", instructions), ("threshold", threshold))
               if v is not None}

    def change(policy: dict[str, Any]) -> dict[str, Any]:
        current = ExtractionConfig.from_dict(policy.get(POLICY_KEY) or None)
        if expected_version is not None and current.version != expected_version:
            raise ConflictError(f"the extraction rules of cube {found.name!r} are at version "
                                f"{current.version}, expected {expected_version}")
        body = {**current.as_dict(), **{k: list(v) if isinstance(v, list | tuple) else v
                                        for k, v in changed.items()}}
        body.update(version=current.version + 1, updated_at=utcnow().isoformat(),
                    updated_by=mos.actor.user_id)
        checked = ExtractionConfig.from_dict(body)  # ValidationError aborts the update
        return {**policy, POLICY_KEY: checked.as_dict()}

    policy = mos.vault.governance.update_policy(found.id, change)
    stored = ExtractionConfig.from_dict(policy[POLICY_KEY])
    mos._audit("set_extraction_rules", cube_id=found.id, detail={
        "version": stored.version, "fields": sorted(changed),
        "sha256": text_hash(json.dumps(policy[POLICY_KEY], sort_keys=True)),
        "rules": [r.id for r in stored.rules],
        "categories": [c.name for c in stored.categories]})
    return {"cube_id": found.id, **stored.as_dict()}


# --- rules in a cube archive (memosys.infra.exchange_*) -----------------------------------------
def for_archive(mos: MemOS, cube_id: str) -> dict[str, Any] | None:
    """The cube's rules as an archive's manifest carries them (None: it has none); who
    changed them last stays behind, it names a user of this installation."""
    config = load(mos, cube_id)
    if config.empty:
        return None
    body = config.as_dict()
    body.pop("updated_by")
    return body


def from_archive(raw: Any) -> ExtractionConfig | None:
    """An archive's rules, checked like a `PUT` of them (before the import writes anything)."""
    if raw is None:
        return None
    try:
        config = ExtractionConfig.from_dict(raw)
    except ValidationError as exc:
        raise ArchiveError(f"archive manifest: extraction: {exc}") from None
    return None if config.empty else config


def adopt(mos: MemOS, cube_id: str, config: ExtractionConfig) -> dict[str, Any]:
    """Give a cube just created by an import the rules its archive came with (audited as
    any rule change; the version count starts afresh here)."""
    return set_rules(mos, cube_id, categories=[c.as_dict() for c in config.categories],
                     rules=[r.as_dict() for r in config.rules],
                     instructions=config.instructions, threshold=config.threshold)


def dry_run(mos: MemOS, cube: str, text: str) -> dict[str, Any]:
    """What the cube's rules do to `text`, without writing or auditing anything."""
    found = mos._cube_for(cube, "read", "test_extraction_rules")
    config = load(mos, found.id)
    embed = mos.embedder.embed
    categories = config.categories_for([text], embed)[0]
    denied = config.denied(text, embed, categories)
    raw, matches = config.withhold(text, embed)
    allowed = [r for r in config.allow if r.plain_match(text)]
    return {
        "cube_id": found.id, "version": config.version,
        "direct_write": "refused" if denied else "stored",
        "denied_by": _rule_ref(denied) if denied else None,
        "allowed_by": [_rule_ref(r) for r in allowed],
        "categories": categories,
        "as_raw_input": raw,
        "withheld": [_rule_ref(m.rule) for m in matches],
    }


def _rule_ref(rule: Rule) -> dict[str, str]:
    return {"id": rule.id, "name": rule.name, "kind": rule.kind}


# --- the write choke point --------------------------------------------------------------------
def enforce(mos: MemOS, access: Access, cube_id: str,
            items: list[MemoryItem]) -> list[MemoryItem]:
    """Items as they may be written under the cube's deny rules (see the module doc)."""
    config = load(mos, cube_id)
    if not config.deny or not items:
        return items
    embed = mos.embedder.embed
    # category rules compare embeddings: one call for the batch (memoised, so the write
    # that follows embeds nothing again)
    found: list[list[str]] | list[None] = (
        config.categories_for([i.text for i in items], embed)
        if any(r.category for r in config.deny) else [None] * len(items))
    out: list[MemoryItem] = []
    for item, cats in zip(items, found, strict=True):
        if item.memory_type in RAW_TYPES:
            out.append(_withhold(config, access, cube_id, item, embed, cats))
            continue
        rule = config.denied(item.text, embed, cats)
        if rule is not None:
            _audit(access, cube_id, rule, item.text, "refused", item.memory_type)
            raise RefusedByRuleError.of(rule.id, rule.name)
        out.append(item)
    return out


def _withhold(config: ExtractionConfig, access: Access, cube_id: str, item: MemoryItem,
              embed: Any, categories: list[str] | None) -> MemoryItem:
    speaker = item.metadata.get("speaker")
    prefix = f"{speaker}: " if speaker and item.text.startswith(f"{speaker}: ") else ""
    text, matches = config.withhold(item.text[len(prefix):], embed, categories)
    if not matches:
        return item
    for m in matches:
        _audit(access, cube_id, m.rule, m.span, "withheld", item.memory_type,
               items=((item.id, item.version),))
    withheld = [*item.metadata.get("withheld", []),
                *({"rule_id": m.rule.id, "rule_name": m.rule.name} for m in matches)]
    return item.model_copy(update={"text": prefix + text,
                                   "metadata": {**item.metadata, "withheld": withheld}})


def _audit(access: Access, cube_id: str, rule: Rule, text: str, action: str,
           memory_type: MemoryType | str, items: Sequence[tuple[str, int]] = (),
           episodes: Sequence[str] = ()) -> None:
    detail: dict[str, Any] = {
        "rule_id": rule.id, "rule_name": rule.name, "action": action,
        "memory_type": str(getattr(memory_type, "value", memory_type)),
        "sha256": text_hash(text)}
    if episodes:
        detail["episodes"] = list(episodes)
    access.audit_refusal(AUDIT_OP, "denied", cube_id=cube_id, items=items, detail=detail)


# --- MemReader --------------------------------------------------------------------------------
def guided(extractor: Extractor, config: ExtractionConfig) -> Extractor:
    """The extractor with the cube's guidance in its model prompt (a copy; rule-based
    extractors are returned as they are)."""
    from memosys.interface.extract import CombinedExtractor
    from memosys.interface.llm_extract import LLMExtractor

    if config.empty:
        return extractor
    if isinstance(extractor, LLMExtractor):
        out = copy.copy(extractor)
        out.guidance = prompt_guidance(config, with_categories=out.fmt == "json")
        out.categories = tuple(c.name for c in config.categories)
        return out
    if isinstance(extractor, CombinedExtractor):
        combined = copy.copy(extractor)
        combined.llm_extractor = guided(extractor.llm_extractor, config)
        return combined
    return extractor


def screen(mos: MemOS, cube_id: str, turn: Turn, candidates: list[Candidate],
           config: ExtractionConfig) -> tuple[list[Candidate], list[Decision]]:
    """(candidates to reconcile, REFUSED decisions). See the module doc."""
    from memosys.interface.reconcile import Decision

    if config.empty:
        return candidates, []
    candidates = [*candidates, *_allowed(turn, candidates, config)]
    embed = mos.embedder.embed
    found = config.categories_for([c.text for c in candidates], embed)
    kept: list[Candidate] = []
    refused: list[Decision] = []
    for cand, cats in zip(candidates, found, strict=True):
        given = [t for t in cand.tags if t.startswith(CATEGORY_TAG)]
        rule = config.denied(cand.text, embed,
                             [*cats, *(t[len(CATEGORY_TAG):] for t in given)])
        if rule is not None:
            _audit(mos._access, cube_id, rule, cand.text, "dropped", cand.memory_type,
                   episodes=cand.derived_from)
            # no text: decisions end up in job results and episode metadata
            refused.append(Decision("REFUSED", f"refused by rule {rule.id} ({rule.name})",
                                    "", cand.memory_type.value, decided_by=f"rule:{rule.id}",
                                    episode_ids=list(cand.derived_from)))
            continue
        if not given:  # the model's choice stands; else keywords and similarity decide
            cand.tags = [*cand.tags, *(f"{CATEGORY_TAG}{c}" for c in cats)]
        kept.append(cand)
    return kept, refused


def refused_decision(exc: RefusedByRuleError, memory_type: str | None,
                     episode_ids: Sequence[str]) -> Decision:
    """The decision for a write the choke point refused during reconciliation or a
    memory command (already audited there)."""
    from memosys.interface.reconcile import Decision

    return Decision("REFUSED", f"refused by rule {exc.rule_id} ({exc.rule_name})", "",
                    memory_type or "", decided_by=f"rule:{exc.rule_id}",
                    episode_ids=list(episode_ids))


def _allowed(turn: Turn, have: list[Candidate], config: ExtractionConfig) -> list[Candidate]:
    """Candidates for sentences an allow rule matches that no candidate covers yet."""
    from memosys.interface.extract import classify, make_candidate
    from memosys.interface.rewrite import sentences
    from memosys.operation.context import content_words

    if not config.allow or turn.role == "assistant":
        return []
    covered = [set(content_words(c.text)) for c in have]
    out: list[Candidate] = []
    for sentence in sentences(turn.text):
        rule = next((r for r in config.allow if r.plain_match(sentence)), None)
        if rule is None:
            continue
        words = set(content_words(sentence))
        if any(words and len(words & c) / len(words) >= 0.5 for c in covered):
            continue
        kind = classify(sentence, turn.role) or MemoryType.FACT
        cand = make_candidate(turn, sentence, kind, f"rule:{rule.id}")
        if cand is None:
            continue
        if rule.category:
            cand.tags = [*cand.tags, f"{CATEGORY_TAG}{rule.category}"]
        covered.append(words)
        out.append(cand)
    return out
