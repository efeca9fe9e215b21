"""Turn free text into a safe FTS5 MATCH expression (BM25 over any of the words).

User text must never reach FTS5 as syntax: quotes, NEAR, column filters and operators
would either fail or change the meaning, so every word is quoted as a plain term.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)

# Question words and function words match almost every turn of a conversation; dropping
# them from the query keeps BM25 focused on content words (kept if nothing else is left).
STOPWORDS = frozenset(
    """a an the and or but if of at by for with about against between into through during
    before after above below to from up down in out on off over under again further then
    once here there when where why how all any both each few more most other some such no
    nor not only own same so than too very s t can will just don should now is am are was
    were be been being have has had having do does did doing would could might must shall
    i me my myself we our ours you your yours he him his she her hers it its they them their
    what which who whom this that these those as until while""".split()
)


def query_terms(text: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    content = [w for w in words if w not in STOPWORDS]
    return list(dict.fromkeys(content or words))


def fts_match_expression(text: str) -> str | None:
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
