"""Sensitive-data detection, masking and redaction.

The default detector is regular expressions plus checksums, with no model and no network:

| label          | what                                                   | check            |
|----------------|--------------------------------------------------------|------------------|
| email          | addresses                                              | shape            |
| phone          | 7-15 digits in phone notation (+, (area), 3-3-4, 'call') | digit count    |
| payment_card   | 13-19 digit card numbers, spaced or not                | Luhn             |
| national_id    | US SSN, UK National Insurance number                   | reserved ranges  |
| iban           | international bank account numbers                     | ISO 7064 mod 97  |
| ip_address     | IPv4 and IPv6 addresses                                | `ipaddress`      |
| secret         | well-known API key/token shapes, private keys, JWTs, `password=` | shape  |

A detector is anything with `name` and `detect(text) -> list[Finding]`; `make_detector`
returns the regex one, or adds Microsoft Presidio's analyzer when asked for
(`"presidio"`, only where it is installed — its models are the user's to provide).

`mask_text` (search/get results for actors without the `sensitive` scope) and
`redact_text` (exports and shares) both replace each finding with `[LABEL]`; redaction is
the irreversible form used on data that leaves the installation.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from memosys.errors import ValidationError
from memosys.types import MemoryItem


@dataclass(frozen=True)
class Finding:
    label: str
    start: int
    end: int


class PIIDetector(Protocol):
    name: str

    def detect(self, text: str) -> list[Finding]: ...


# --- checks ----------------------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    total = 0
    for pos, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if pos % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(value: str) -> bool:
    s = value.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in moved))
    except ValueError:
        return False
    return number % 97 == 1


def _ssn_ok(value: str) -> bool:
    area, group, serial = value.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# --- the regex detector ----------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}"
                    r"(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}(?![\w-])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_NINO = re.compile(r"(?<![A-Za-z0-9])[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?"
                   r"[A-D](?![A-Za-z0-9])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"
                   r"(?![A-Za-z0-9])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"
                   r"(?![0-9A-Fa-f:])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}"
                    r"(?:[ .-]\d{2,4}){1,4}(?![\w])")
_NANP = re.compile(r"^\d{3}[ .-]\d{3}[ .-]\d{4}$")
_PHONE_WORD = re.compile(r"(?i)\b(?:call|phone|tel|mobile|cell|whatsapp|sms|text me|"
                         r"number|fax)\b[^\d]{0,12}$")
_DATE_LIKE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_SECRETS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"sk-(?:proj-)?[A-Za-z0-9_\-]{20,}"               # OpenAI-style
    r"|sk_(?:live|test)_[A-Za-z0-9]{16,}"             # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|AKIA[0-9A-Z]{16}"                              # AWS access key id
    r"|AIza[0-9A-Za-z_\-]{35}"                        # Google API key
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"                  # Slack
    r"|msk_[0-9a-f]{16}_[A-Za-z0-9_\-]{20,}"          # memosys's own keys
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWT
    r")(?![A-Za-z0-9])"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
    r"|(?i:\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)"
    r"\s*[:=]\s*)[^\s,;]{6,}"
)


class RegexDetector:
    """Regular expressions plus checksums (see the module docstring)."""

    name = "regex"

    def detect(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        found += [Finding("secret", m.start(), m.end()) for m in _SECRETS.finditer(text)]
        found += [Finding("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]
        for m in _IBAN.finditer(text):
            if iban_ok(m.group()):
                found.append(Finding("iban", m.start(), m.end()))
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
                found.append(Finding("payment_card", m.start(), m.end()))
        found += [Finding("national_id", m.start(), m.end())
                  for m in _SSN.finditer(text) if _ssn_ok(m.group())]
        found += [Finding("national_id", m.start(), m.end()) for m in _NINO.finditer(text)]
        for pattern in (_IPV4, _IPV6):
            for m in pattern.finditer(text):
                try:
                    ipaddress.ip_address(m.group())
                except ValueError:
                    continue
                found.append(Finding("ip_address", m.start(), m.end()))
        for m in _PHONE.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            value = m.group()
            if not 7 <= len(digits) <= 15 or _DATE_LIKE.match(value):
                continue
            # Phone notation, not just any spaced digits: international (+), an area code
            # in parentheses, North American 3-3-4, or a phone word just before it.
            before = text[max(0, m.start() - 20):m.start()]
            if not (value.startswith(("+", "(")) or _NANP.match(value)
                    or _PHONE_WORD.search(before)):
                continue
            found.append(Finding("phone", m.start(), m.end()))
        return _non_overlapping(found)


_PRIORITY = ("secret", "email", "iban", "payment_card", "national_id", "ip_address", "phone")


def _non_overlapping(findings: list[Finding]) -> list[Finding]:
    """Where findings overlap keep the more specific one (the order of `_PRIORITY`),
    then the longer."""
    ranked = sorted(findings, key=lambda f: (_PRIORITY.index(f.label)
                                             if f.label in _PRIORITY else len(_PRIORITY),
                                             -(f.end - f.start)))
    kept: list[Finding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


class PresidioDetector:
    """Microsoft Presidio's analyzer, where installed (never installed by memosys)."""

    name = "presidio"
    _LABELS = {
        "EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "payment_card",
        "US_SSN": "national_id", "UK_NHS": "national_id", "IBAN_CODE": "iban",
        "IP_ADDRESS": "ip_address", "PERSON": "person", "LOCATION": "location",
    }

    def __init__(self) -> None:
        try:
            from presidio_analyzer import AnalyzerEngine  # type: ignore[import-not-found]
        except ImportError:
            raise ValidationError("the presidio detector needs presidio-analyzer installed") \
                from None
        self._engine = AnalyzerEngine()

    def detect(self, text: str) -> list[Finding]:
        results = self._engine.analyze(text=text, language="en")
        return [Finding(self._LABELS.get(r.entity_type, r.entity_type.lower()), r.start, r.end)
                for r in results]


class CombinedDetector:
    def __init__(self, detectors: Sequence[PIIDetector]) -> None:
        self.detectors = list(detectors)
        self.name = "+".join(d.name for d in self.detectors)

    def detect(self, text: str) -> list[Finding]:
        return _non_overlapping([f for d in self.detectors for f in d.detect(text)])


def make_detector(spec: str = "regex") -> PIIDetector:
    if spec == "regex":
        return RegexDetector()
    if spec == "presidio":
        return CombinedDetector([RegexDetector(), PresidioDetector()])
    raise ValidationError(f"PII detector must be 'regex' or 'presidio', got {spec!r}")


DEFAULT_DETECTOR: PIIDetector = RegexDetector()


# --- using findings --------------------------------------------------------------------------
def labels(text: str, detector: PIIDetector | None = None) -> list[str]:
    """The sorted, distinct labels of what `text` contains."""
    return sorted({f.label for f in (detector or DEFAULT_DETECTOR).detect(text)})


def mask_text(text: str, detector: PIIDetector | None = None) -> str:
    """Each finding replaced by `[LABEL]`."""
    findings = (detector or DEFAULT_DETECTOR).detect(text)
    if not findings:
        return text
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos:f.start])
        parts.append(f"[{f.label.upper()}]")
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)


redact_text = mask_text
"""Redaction (for exports and shares) writes the same placeholders as masking; the
difference is where it is applied: on data that leaves, not on what a reader is shown."""


def redact_item(item: MemoryItem, detector: PIIDetector | None = None) -> MemoryItem:
    """A copy for export with sensitive text redacted (labels kept, so the receiver knows
    something was removed). The exchange code calls this through
    `MemOS.redact_for_export`, which applies each cube's policy."""
    if not item.sensitivity:
        return item
    redacted = redact_text(item.text, detector)
    if redacted == item.text:
        return item
    meta = {**item.metadata, "redacted": sorted(item.sensitivity)}
    return item.model_copy(update={"text": redacted, "metadata": meta})
