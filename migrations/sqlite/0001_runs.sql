-- Runs: one row per unit of LLM work, holding its whole life.
-- Times are INTEGER milliseconds since the Unix epoch (UTC); ids are 16-byte UUID blobs.
CREATE TABLE runs (
    id                BLOB    PRIMARY KEY,
    status            TEXT    NOT NULL CHECK (status IN ('queued','running','completed','failed','timed_out','cancelled','dropped')),
    provider          TEXT    NOT NULL,
    model             TEXT,
    class             INTEGER NOT NULL CHECK (class IN (0, 1)),
    priority          INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 10),
    tenant            TEXT,
    concurrency_key   TEXT,
    session           TEXT,
    batch             TEXT,
    idem_key          TEXT,
    request           TEXT    NOT NULL,
    metadata          TEXT,
    stream            INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    timeout_ms        INTEGER,
    queue_deadline_at INTEGER,
    due_at            INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    lease_owner       BLOB,
    lease_expires_at  INTEGER,
    timeout_origin    TEXT,
    drop_reason       TEXT,
    output_content    TEXT,
    finish_reason     TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    error_kind        TEXT,
    error_message     TEXT,
    error_status      INTEGER
);

CREATE INDEX runs_due ON runs (provider, class, priority, due_at) WHERE status = 'queued';
-- The producer's "when is the next run due" question.
CREATE INDEX runs_next_due ON runs (due_at) WHERE status = 'queued';
-- The sweeper's scan for runs past their queue deadline that never started.
CREATE INDEX runs_deadline ON runs (queue_deadline_at)
    WHERE status = 'queued' AND started_at IS NULL AND queue_deadline_at IS NOT NULL;
-- Runs in flight per provider and class, and per concurrency key (the claim's caps).
CREATE INDEX runs_running_provider ON runs (provider, class) WHERE status = 'running';
CREATE INDEX runs_running_key ON runs (concurrency_key, class)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
-- Background quotas: a session's recent background runs per concurrency key.
CREATE INDEX runs_session ON runs (session, concurrency_key, created_at)
    WHERE class = 1 AND session IS NOT NULL;
CREATE INDEX runs_leased ON runs (lease_expires_at) WHERE status = 'running';
CREATE UNIQUE INDEX runs_idem ON runs (idem_key) WHERE idem_key IS NOT NULL;

CREATE TABLE run_attempts (
    id             INTEGER PRIMARY KEY,
    run_id         BLOB    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt        INTEGER NOT NULL,
    worker         BLOB    NOT NULL,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    outcome        TEXT,
    status         INTEGER,
    retry_after_ms INTEGER,
    error_message  TEXT
);
CREATE INDEX run_attempts_run ON run_attempts (run_id, attempt);

CREATE TABLE run_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  BLOB    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind    TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    attempt INTEGER,
    data    TEXT,
    class   INTEGER NOT NULL,
    tenant  TEXT,
    batch   TEXT
);
CREATE INDEX run_events_run ON run_events (run_id, id);

CREATE TABLE provider_state (
    provider   TEXT PRIMARY KEY,
    limiter    TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);
