"""Per-cube extraction rules: the model and its evaluation (no storage, no runtime).

A cube's :class:`ExtractionConfig` holds

* **categories** — name, description and optional keywords; MemReader tags every memory
  it writes with the categories that fit (``category:<name>`` tags). With a model the
  extraction prompt asks for them; without one (and as a fallback) a category fits when
  one of its keywords occurs in the text or the text's embedding is close enough to the
  description's (cosine >= ``threshold``, so unrelated text gets no category);
* **rules** — ``deny`` ("never remember") and ``allow`` ("always remember") rules, each
  matching by keywords (whole words/phrases, case-insensitive), regular expressions, PII
  labels (:mod:`memosys.infra.pii`: "never store phone numbers") and/or a category
  (deny: "never store anything in category health"). Deny rules hold on every write
  path (see :mod:`memosys.system_extraction`); allow rules make MemReader keep
  a matching sentence even when its extractor proposed nothing for it, and a deny rule
  always wins over an allow rule;
* **instructions** — free text for the model's extraction prompt (what to remember, what
  never to remember). Only a model can follow free text; what must hold without one is
  written as rules.

Rule matching never needs a model: keywords, regexes and PII labels are plain string
work; category rules need the embedder only when a category has a description to compare.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memosys.errors import ValidationError
from memosys.infra.pii import labels as pii_labels
from memosys.interface.rewrite import sentences

KINDS = ("deny", "allow")
PII_LABELS = ("email", "phone", "payment_card", "national_id", "iban", "ip_address",
              "secret")
"""What memosys.infra.pii's regex detector reports (a rule may name any of them)."""
DEFAULT_THRESHOLD = 0.2
"""MiniLM cosine between a sentence and "name: description" that counts as a fit. Measured
on a dozen chat sentences against three one-line descriptions: on-topic 0.20-0.39,
off-topic <= 0.18. Similarity is the fallback; keywords are the precise part."""
CATEGORY_TAG = "category:"
MAX_RULES = 100
MAX_CATEGORIES = 50
MAX_TERMS = 50
MAX_PATTERN_CHARS = 300
MAX_INSTRUCTIONS = 4000
_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
_NAME = re.compile(r"^[\w][\w .\-/&]{0,79}$")

Embed = Callable[[Sequence[str]], np.ndarray]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64] or "rule"


def text_hash(text: str) -> str:
    """What the audit log keeps of a refused text: its sha256, never the text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Category:
    name: str
    description: str = ""
    keywords: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        return f"{CATEGORY_TAG}{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "keywords": list(self.keywords)}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    kind: str = "deny"
    keywords: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    pii: tuple[str, ...] = ()
    category: str | None = None
    description: str = ""
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind,
                "keywords": list(self.keywords), "patterns": list(self.patterns),
                "pii": list(self.pii), "category": self.category,
                "description": self.description}

    def plain_match(self, text: str) -> bool:
        """Keywords, regexes or PII labels (everything but the category) match `text`."""
        if any(p.search(text) for p in self._compiled):
            return True
        return bool(self.pii) and bool(set(self.pii) & set(pii_labels(text)))

    def summary(self) -> str:
        """A line for the model's prompt."""
        what = self.description or ", ".join(
            [*self.keywords, *(f"{p.replace('_', ' ')} data" for p in self.pii),
             *([f"anything about {self.category}"] if self.category else [])])
        return f"{self.name}" + (f" ({what})" if what else "")


@dataclass(frozen=True)
class RuleMatch:
    rule: Rule
    span: str
    """The text that matched (a sentence, or the whole text): never stored or logged."""


@dataclass(frozen=True)
class ExtractionConfig:
    categories: tuple[Category, ...] = ()
    rules: tuple[Rule, ...] = ()
    instructions: str = ""
    threshold: float = DEFAULT_THRESHOLD
    version: int = 0
    updated_at: str | None = None
    updated_by: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.categories or self.rules or self.instructions)

    @property
    def deny(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.kind == "deny")

    @property
    def allow(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.kind == "allow")

    def category(self, name: str) -> Category | None:
        return next((c for c in self.categories if c.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "updated_at": self.updated_at,
                "updated_by": self.updated_by, "instructions": self.instructions,
                "threshold": self.threshold,
                "categories": [c.as_dict() for c in self.categories],
                "rules": [r.as_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, raw: Any) -> ExtractionConfig:
        """Validated config; ValidationError with the offending field otherwise."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValidationError("extraction config must be an object")
        unknown = set(raw) - {"version", "updated_at", "updated_by", "instructions",
                              "threshold", "categories", "rules"}
        if unknown:
            raise ValidationError(f"unknown extraction field(s) {sorted(unknown)}; known: "
                                  "categories, rules, instructions, threshold")
        categories = check_categories(raw.get("categories") or [])
        rules = check_rules(raw.get("rules") or [], {c.name for c in categories})
        return cls(categories=categories, rules=rules,
                   instructions=check_instructions(raw.get("instructions") or ""),
                   threshold=check_threshold(raw.get("threshold", DEFAULT_THRESHOLD)),
                   version=int(raw.get("version") or 0), updated_at=raw.get("updated_at"),
                   updated_by=raw.get("updated_by"))

    # --- evaluation ----------------------------------------------------------------------
    def categories_for(self, texts: Sequence[str], embed: Embed | None) -> list[list[str]]:
        """The category names that fit each text: every category with a keyword in it,
        else the one whose description is most similar, if at least `threshold` (needs
        `embed`; one by similarity, as near-threshold runners-up are mostly noise)."""
        out: list[list[str]] = [[] for _ in texts]
        if not self.categories or not texts:
            return out
        for i, text in enumerate(texts):
            out[i] = [c.name for c in self.categories if _has_term(text, c.keywords)]
        described = [c for c in self.categories if c.description]
        if embed is not None and described:
            vectors = np.asarray(embed(list(texts)), dtype=np.float32)
            anchors = np.asarray(embed([f"{c.name}: {c.description}" for c in described]),
                                 dtype=np.float32)
            scores = _unit(vectors) @ _unit(anchors).T
            for i in range(len(texts)):
                j = int(np.argmax(scores[i]))
                if not out[i] and scores[i, j] >= self.threshold:
                    out[i].append(described[j].name)
        return out

    def first_match(self, text: str, rules: Sequence[Rule], embed: Embed | None,
                    categories: Sequence[str] | None = None) -> Rule | None:
        """The first of `rules` that matches the whole text (`categories`: the text's
        categories when already known)."""
        for rule in rules:
            if rule.plain_match(text):
                return rule
        scoped = [r for r in rules if r.category]
        if scoped:
            found = categories if categories is not None else \
                self.categories_for([text], embed)[0]
            for rule in scoped:
                if rule.category in found:
                    return rule
        return None

    def denied(self, text: str, embed: Embed | None,
               categories: Sequence[str] | None = None) -> Rule | None:
        return self.first_match(text, self.deny, embed, categories)

    def withhold(self, text: str, embed: Embed | None,
                 categories: Sequence[str] | None = None) -> tuple[str, list[RuleMatch]]:
        """Raw input with the sentences a deny rule matches replaced by a marker, and the
        matches. A rule matching only across sentences withholds the whole text.
        `categories`: the whole text's, when already known."""
        whole = self.denied(text, embed, categories)
        if whole is None:
            return text, []
        parts = sentences(text)
        # one embedding call for all sentences (only category rules need them)
        found: list[list[str]] | list[None] = (
            self.categories_for(parts, embed) if any(r.category for r in self.deny)
            else [None] * len(parts))
        kept: list[str] = []
        matches: list[RuleMatch] = []
        for part, cats in zip(parts, found, strict=True):
            rule = self.denied(part, embed, cats)
            if rule is None:
                kept.append(part)
            else:
                matches.append(RuleMatch(rule, part))
                marker = withheld_marker(rule)
                if not kept or kept[-1] != marker:
                    kept.append(marker)
        if not matches:  # only the whole text matches (a pattern across sentences)
            return withheld_marker(whole), [RuleMatch(whole, text)]
        return " ".join(kept), matches


def withheld_marker(rule: Rule) -> str:
    return f"[withheld by rule {rule.id}]"


_MARKER = re.compile(r"\s*\[withheld by rule [a-z0-9_.\-]+\]\s*")


def strip_markers(text: str) -> str:
    """Raw input without the withheld markers (what extraction should read)."""
    return _MARKER.sub(" ", text).strip()


def _unit(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms == 0, 1, norms)


def _term_pattern(term: str) -> re.Pattern[str]:
    body = r"\s+".join(re.escape(w) for w in term.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _has_term(text: str, terms: Sequence[str]) -> bool:
    return any(_term_pattern(t).search(text) for t in terms)


# --- validation ----------------------------------------------------------------------------
def _strings(value: Any, what: str, limit: int = MAX_TERMS, chars: int = 100) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValidationError(f"{what} must be a list of strings")
    out = []
    for v in value:
        if not isinstance(v, str) or not v.strip():
            raise ValidationError(f"{what} must be non-empty strings")
        if len(v) > chars:
            raise ValidationError(f"{what}: {v[:40]!r}... is over {chars} characters")
        out.append(v.strip())
    if len(out) > limit:
        raise ValidationError(f"{what}: at most {limit} entries")
    return tuple(dict.fromkeys(out))


def check_categories(raw: Any) -> tuple[Category, ...]:
    if not isinstance(raw, list | tuple):
        raise ValidationError("categories must be a list")
    if len(raw) > MAX_CATEGORIES:
        raise ValidationError(f"at most {MAX_CATEGORIES} categories")
    out: list[Category] = []
    for c in raw:
        if isinstance(c, Category):
            c = c.as_dict()
        if not isinstance(c, dict) or set(c) - {"name", "description", "keywords"}:
            raise ValidationError("a category is {name, description, keywords}")
        name = c.get("name")
        if not isinstance(name, str) or not _NAME.match(name.strip()):
            raise ValidationError(f"invalid category name {name!r}: 1-80 letters, digits, "
                                  "spaces, '.', '-', '/', '&'")
        desc = c.get("description") or ""
        if not isinstance(desc, str) or len(desc) > 500:
            raise ValidationError(f"category {name!r}: description must be text <= 500 chars")
        if any(o.name == name.strip() for o in out):
            raise ValidationError(f"category {name!r} is given twice")
        out.append(Category(name.strip(), desc.strip(),
                            _strings(c.get("keywords"), f"category {name!r} keywords")))
    return tuple(out)


def check_rules(raw: Any, category_names: set[str]) -> tuple[Rule, ...]:
    if not isinstance(raw, list | tuple):
        raise ValidationError("rules must be a list")
    if len(raw) > MAX_RULES:
        raise ValidationError(f"at most {MAX_RULES} rules")
    out: list[Rule] = []
    for r in raw:
        if isinstance(r, Rule):
            r = r.as_dict()
        known = {"id", "name", "kind", "keywords", "patterns", "pii", "category",
                 "description"}
        if not isinstance(r, dict) or set(r) - known:
            raise ValidationError(f"a rule is an object with fields {sorted(known)}")
        name = r.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 80:
            raise ValidationError("every rule needs a name (<= 80 characters)")
        rule_id = r.get("id") or slug(name)
        if not isinstance(rule_id, str) or not _ID.match(rule_id):
            raise ValidationError(f"invalid rule id {rule_id!r}: lowercase letters, digits, "
                                  "'_', '.', '-'")
        if any(o.id == rule_id for o in out):
            raise ValidationError(f"rule id {rule_id!r} is used twice")
        kind = r.get("kind") or "deny"
        if kind not in KINDS:
            raise ValidationError(f"rule {rule_id!r}: kind must be deny or allow")
        keywords = _strings(r.get("keywords"), f"rule {rule_id!r} keywords")
        patterns = _strings(r.get("patterns"), f"rule {rule_id!r} patterns",
                            chars=MAX_PATTERN_CHARS)
        compiled = [_term_pattern(k) for k in keywords]
        for p in patterns:
            try:
                compiled.append(re.compile(p, re.IGNORECASE))
            except re.error as exc:
                raise ValidationError(f"rule {rule_id!r}: bad regex {p!r}: {exc}") from None
        pii = _strings(r.get("pii"), f"rule {rule_id!r} pii")
        bad = set(pii) - set(PII_LABELS)
        if bad:
            raise ValidationError(f"rule {rule_id!r}: unknown PII label(s) {sorted(bad)}; "
                                  f"known: {list(PII_LABELS)}")
        category = r.get("category") or None
        if category is not None and category not in category_names:
            raise ValidationError(f"rule {rule_id!r}: no category {category!r} is defined")
        if kind == "deny" and not (keywords or patterns or pii or category):
            raise ValidationError(f"rule {rule_id!r} matches nothing: give keywords, "
                                  "patterns, pii labels or a category")
        if kind == "allow" and not (keywords or patterns or pii):
            raise ValidationError(f"allow rule {rule_id!r} needs keywords, patterns or pii")
        desc = r.get("description") or ""
        if not isinstance(desc, str) or len(desc) > 500:
            raise ValidationError(f"rule {rule_id!r}: description must be text <= 500 chars")
        out.append(Rule(rule_id, name.strip(), kind, keywords, patterns, pii, category,
                        desc.strip(), tuple(compiled)))
    return tuple(out)


def check_instructions(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValidationError("instructions must be text")
    if len(raw) > MAX_INSTRUCTIONS:
        raise ValidationError(f"instructions are limited to {MAX_INSTRUCTIONS} characters")
    return raw.strip()


def check_threshold(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 1:
        raise ValidationError("threshold must be a number in (0, 1]")
    return float(raw)


# --- the model's prompt --------------------------------------------------------------------
def prompt_guidance(config: ExtractionConfig, *, with_categories: bool) -> str:
    """What the extraction prompt adds for this cube ("" when nothing is configured)."""
    lines: list[str] = []
    if config.instructions:
        lines += ["Instructions for this memory store:", config.instructions]
    if config.deny:
        lines.append("Never extract memories about: "
                     + "; ".join(r.summary() for r in config.deny) + ".")
    if config.allow:
        lines.append("Always extract memories about: "
                     + "; ".join(r.summary() for r in config.allow) + ".")
    if with_categories and config.categories:
        lines.append('Give each memory a "category": the name of the one that fits from '
                     'this list, or "" if none does:')
        lines += [f"- {c.name}: {c.description or ', '.join(c.keywords)}"
                  for c in config.categories]
    return "\n".join(lines)


__all__ = [
    "CATEGORY_TAG",
    "DEFAULT_THRESHOLD",
    "PII_LABELS",
    "Category",
    "ExtractionConfig",
    "Rule",
    "RuleMatch",
    "prompt_guidance",
    "strip_markers",
    "text_hash",
    "withheld_marker",
]
