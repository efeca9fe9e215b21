"""Split a text or markdown document into chunks that each become one document memory.

Chunks follow the structure: markdown headings first, then paragraphs, then sentences, and
only a single over-long sentence is cut at whitespace. Each chunk is an exact slice of the
input (no text is rewritten or dropped, only the whitespace between chunks), so the chunks
in order hold the whole document; each carries the heading path it sits under.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memosys.errors import ValidationError

DEFAULT_CHUNK_CHARS = 2000
MIN_CHUNK_CHARS = 200

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    text: str
    index: int
    start: int
    """Offset of the chunk in the document (characters)."""
    headings: tuple[str, ...] = ()


def decode_document(data: str | bytes, encoding: str = "utf-8") -> str:
    """Text from a str or bytes; bytes that are not valid `encoding` are a clear error."""
    if isinstance(data, bytes | bytearray):
        try:
            return bytes(data).decode(encoding)
        except UnicodeDecodeError as exc:
            raise ValidationError(
                f"document is not valid {encoding}: byte {bytes(data)[exc.start]:#04x} at "
                f"offset {exc.start} ({exc.reason}); decode it first or pass the right "
                "encoding"
            ) from None
        except LookupError:
            raise ValidationError(f"unknown encoding {encoding!r}") from None
    if not isinstance(data, str):
        raise ValidationError(f"document must be str or bytes, got {type(data).__name__}")
    check_text(data, "document")
    return data


def check_text(text: str, what: str) -> None:
    """Strings holding lone surrogates (undecodable bytes smuggled in) cannot be stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{what} holds characters that are not valid Unicode (a lone surrogate at "
            f"offset {exc.start}, usually undecodable bytes); decode the input correctly"
        ) from None


def _split_span(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Spans within [start, end) of at most `limit` characters, at the best boundary."""
    if end - start <= limit:
        return [(start, end)]
    for pattern in (_PARAGRAPH, _SENTENCE_END, re.compile(r"\s+")):
        cuts = [m.end() for m in pattern.finditer(text, start, end) if start < m.start()]
        if not cuts:
            continue
        spans: list[tuple[int, int]] = []
        begin = start
        last = start
        for cut in [*cuts, end]:
            if cut - begin > limit and last > begin:
                spans.append((begin, last))
                begin = last
            last = cut
        spans.append((begin, end))
        out: list[tuple[int, int]] = []
        for s, e in spans:
            out.extend(_split_span(text, s, e, limit) if e - s > limit else [(s, e)])
        return out
    return [(s, min(s + limit, end)) for s in range(start, end, limit)]


def chunk_document(text: str, max_chars: int = DEFAULT_CHUNK_CHARS) -> list[Chunk]:
    """Chunks of at most `max_chars` characters, split by headings, paragraphs, sentences."""
    if not isinstance(max_chars, int) or max_chars < MIN_CHUNK_CHARS:
        raise ValidationError(f"max_chars must be an integer >= {MIN_CHUNK_CHARS}")
    if not text.strip():
        raise ValidationError("document is empty")
    sections: list[tuple[int, int, tuple[str, ...]]] = []
    path: list[tuple[int, str]] = []
    marks = list(_HEADING.finditer(text))
    if not marks or marks[0].start() > 0:
        sections.append((0, marks[0].start() if marks else len(text), ()))
    for n, m in enumerate(marks):
        level = len(m.group(1))
        path = [(lv, h) for lv, h in path if lv < level] + [(level, m.group(2))]
        end = marks[n + 1].start() if n + 1 < len(marks) else len(text)
        sections.append((m.start(), end, tuple(h for _, h in path)))
    chunks: list[Chunk] = []
    for start, end, headings in sections:
        for s, e in _split_span(text, start, end, max_chars):
            body = text[s:e]
            if not body.strip():
                continue
            lead = len(body) - len(body.lstrip())
            chunks.append(Chunk(body.strip(), len(chunks), s + lead, headings))
    return chunks
