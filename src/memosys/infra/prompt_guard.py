"""Memory content is data, not instructions: spotting text that tries to steer the model.

A memory's text can come from anyone who could write into a cube (a shared cube, an
imported archive, a document). When it is later put into a prompt it could try to give
the model orders ("ignore previous instructions", a fake "system:" turn, a fake end of the
memory section). memosys labels such text on write with ``prompt_injection`` in
`sensitivity` (next to the PII labels), so prompt builders and reviewers can see it, and
offers `neutralise` for renderers: it keeps the words but removes what could pass for
prompt structure (role markers, chat-template tokens, section fences, newlines).
"""

from __future__ import annotations

import re

INJECTION_LABEL = "prompt_injection"

_MARKERS = re.compile(
    r"(?i)\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+)?"
    r"(?:previous|prior|above|earlier|preceding|system)\s+(?:instructions?|prompts?|rules?|"
    r"messages?)"
    r"|\byou\s+are\s+now\s+(?:a|an|in|the|my)\b"
    r"|\b(?:new|updated)\s+system\s+(?:prompt|instructions?)\b"
    r"|\breveal\s+(?:your|the)\s+(?:system\s+prompt|instructions|api\s+keys?)\b"
    r"|<\|?(?:im_start|im_end|system|endoftext|eot_id|start_header_id)\|?>"
    r"|^\s*(?:system|assistant)\s*:"
    r"|\[/?INST\]|<</?SYS>>",
    re.MULTILINE,
)
_TEMPLATE_TOKENS = re.compile(r"<\|[^|>]{1,40}\|>|\[/?INST\]|<</?SYS>>")
_ROLE_PREFIX = re.compile(r"(?im)^\s*(system|assistant|user)\s*:")


def injection_markers(text: str) -> list[str]:
    """The phrases in `text` that look like instructions to a model."""
    return [m.group().strip() for m in _MARKERS.finditer(text)]


def neutralise(text: str) -> str:
    """One line of plain words: no chat-template tokens, no role prefixes, no newlines
    that could open a new prompt section."""
    text = _TEMPLATE_TOKENS.sub(" ", text)
    text = _ROLE_PREFIX.sub(lambda m: f"({m.group(1)})", text)
    return " ".join(text.split())
