"""The topic index's tables in PostgreSQL (migration step `TOPIC_MIGRATION_SQL`): the same
tables and columns as SQLite (`sqlite_topics.py`); the SQL is shared (`topic_sql.py`)."""

TOPIC_MIGRATION_SQL = """
CREATE TABLE topics (
    id text PRIMARY KEY,
    cube_id text NOT NULL,
    label text NOT NULL,
    summary text NOT NULL,
    keywords text NOT NULL,
    summary_by text NOT NULL,
    size integer NOT NULL,
    centroid bytea NOT NULL,
    rev integer NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX topics_cube ON topics (cube_id, size);

CREATE TABLE topic_members (
    item_id text PRIMARY KEY,
    topic_id text NOT NULL,
    cube_id text NOT NULL,
    similarity double precision NOT NULL,
    vec bytea NOT NULL
);
CREATE INDEX topic_members_topic ON topic_members (topic_id, similarity);
CREATE INDEX topic_members_cube ON topic_members (cube_id);

CREATE TABLE topic_terms (
    topic_id text NOT NULL,
    cube_id text NOT NULL,
    term text NOT NULL,
    weight double precision NOT NULL,
    PRIMARY KEY (topic_id, term)
);
CREATE INDEX topic_terms_cube ON topic_terms (cube_id, term);
"""
