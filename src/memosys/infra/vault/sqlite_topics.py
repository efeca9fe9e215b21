"""The topic index's tables in the SQLite vault file (topic_sql.py). Idempotent DDL, so an
older vault file gains them on open; its topics are empty until `memosys graph topics
--rebuild` (or `mos.topics_rebuild`)."""

TOPIC_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id TEXT PRIMARY KEY,
    cube_id TEXT NOT NULL,
    label TEXT NOT NULL,
    summary TEXT NOT NULL,
    keywords TEXT NOT NULL,
    summary_by TEXT NOT NULL,
    size INTEGER NOT NULL,
    centroid BLOB NOT NULL,
    rev INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS topics_cube ON topics(cube_id, size);
CREATE TABLE IF NOT EXISTS topic_members (
    item_id TEXT PRIMARY KEY,
    topic_id TEXT NOT NULL,
    cube_id TEXT NOT NULL,
    similarity REAL NOT NULL,
    vec BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS topic_members_topic ON topic_members(topic_id, similarity);
CREATE INDEX IF NOT EXISTS topic_members_cube ON topic_members(cube_id);
CREATE TABLE IF NOT EXISTS topic_terms (
    topic_id TEXT NOT NULL,
    cube_id TEXT NOT NULL,
    term TEXT NOT NULL,
    weight REAL NOT NULL,
    PRIMARY KEY (topic_id, term)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS topic_terms_cube ON topic_terms(cube_id, term);
"""
