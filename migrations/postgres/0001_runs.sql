-- Runs: one row per unit of LLM work, holding its whole life.
CREATE TABLE runs (
    id                UUID PRIMARY KEY,
    status            TEXT        NOT NULL CHECK (status IN ('queued','running','completed','failed','timed_out','cancelled','dropped')),
    provider          TEXT        NOT NULL,
    model             TEXT,
    class             SMALLINT    NOT NULL CHECK (class IN (0, 1)), -- 0 live, 1 background: ORDER BY class puts live first
    priority          SMALLINT    NOT NULL CHECK (priority BETWEEN 1 AND 10),
    tenant            TEXT,
    concurrency_key   TEXT,
    session           TEXT,
    batch             TEXT,
    idem_key          TEXT,       -- tenant + idempotency_key, unique while set
    request           JSON        NOT NULL, -- kept verbatim: the server never rewrites it
    metadata          JSON,
    stream            BOOLEAN     NOT NULL DEFAULT FALSE,
    max_attempts      SMALLINT    NOT NULL,
    attempts          SMALLINT    NOT NULL DEFAULT 0,
    timeout_ms        INTEGER,
    queue_deadline_at TIMESTAMPTZ,
    due_at            TIMESTAMPTZ NOT NULL, -- run_at at first, next_attempt_at after a failure
    created_at        TIMESTAMPTZ NOT NULL,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    lease_owner       UUID,
    lease_expires_at  TIMESTAMPTZ,
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

-- Exactly the "due" predicate of the claim, per provider (each provider is claimed within
-- its own quota), in dispatch order.
CREATE INDEX runs_due ON runs (provider, class, priority, due_at) WHERE status = 'queued';
-- The rescuer's scan for expired leases.
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

-- One row per attempt; an attempt interrupted by a shutdown keeps its row (outcome
-- 'released') and the attempt number is tried again.
CREATE TABLE run_attempts (
    id             BIGSERIAL PRIMARY KEY,
    run_id         UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt        SMALLINT    NOT NULL,
    worker         UUID        NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL,
    finished_at    TIMESTAMPTZ,
    outcome        TEXT,
    status         INTEGER,
    retry_after_ms BIGINT,
    error_message  TEXT
);
CREATE INDEX run_attempts_run ON run_attempts (run_id, attempt);

-- The lifecycle event log, written in the same statement as each state change. Ids grow
-- in commit order within one run (its row lock serialises its changes); across runs the
-- event pump tolerates ids that commit out of order (see src/store/postgres/events.rs).
CREATE TABLE run_events (
    id      BIGSERIAL PRIMARY KEY,
    run_id  UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind    TEXT        NOT NULL,
    at      TIMESTAMPTZ NOT NULL,
    attempt SMALLINT,
    data    JSON,        -- kind-specific fields (error kind, status, retry_at, …)
    class   SMALLINT    NOT NULL,
    tenant  TEXT,        -- copied from the run so dashboards filter without a join
    batch   TEXT
);
CREATE INDEX run_events_run ON run_events (run_id, id);

-- One notification per statement that wrote events: the event pumps of every process
-- read what is new.
CREATE FUNCTION sluice_events_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sluice_events', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER run_events_notify AFTER INSERT ON run_events
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_events_written();

-- Adaptive state per provider (the limiter's current rate), so a restart does not begin at
-- the configured ceiling again.
CREATE TABLE provider_state (
    provider   TEXT PRIMARY KEY,
    limiter    JSON        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
