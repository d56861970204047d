-- Batches finish, and may be submitted idempotently: `finished_at` is set once, by the
-- sweep that writes the batch's `batch_finished` event; `idem_key` (tenant + the body's
-- `idempotency_key`) makes a retried `POST /batches` answer with the first batch.
-- Times are INTEGER milliseconds since the Unix epoch (UTC).
ALTER TABLE batches ADD COLUMN finished_at INTEGER;
ALTER TABLE batches ADD COLUMN idem_key TEXT;
CREATE UNIQUE INDEX batches_idem ON batches (idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX batches_open ON batches (created_at) WHERE finished_at IS NULL;

-- Listing runs newest first with keyset pagination on (created_at, id); the same indexes
-- as on PostgreSQL, for the same reasons (see migrations/postgres/0005): one index on every
-- run, partial ones for tenant, batch and the statuses other than `completed`.
CREATE INDEX runs_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_tenant_created ON runs (tenant, created_at DESC, id DESC)
    WHERE tenant IS NOT NULL;
CREATE INDEX runs_batch_created ON runs (batch, created_at DESC, id DESC)
    WHERE batch IS NOT NULL;
CREATE INDEX runs_status_created ON runs (status, created_at DESC, id DESC)
    WHERE status <> 'completed';

-- The event log also holds batch events (`batch_paused`, `batch_resumed`,
-- `batch_finished`), whose `run_id` is the batch's id, not a run's: the log loses its
-- foreign key to `runs`, as it did on PostgreSQL (migration 0002 there). Its events are
-- written by the statements that write their run, so a run event's run always exists.
CREATE TABLE run_events_keyless (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  BLOB    NOT NULL,
    kind    TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    attempt INTEGER,
    data    TEXT,
    class   INTEGER NOT NULL,
    tenant  TEXT,
    batch   TEXT
);
INSERT INTO run_events_keyless (id, run_id, kind, at, attempt, data, class, tenant, batch)
    SELECT id, run_id, kind, at, attempt, data, class, tenant, batch FROM run_events;
DROP TABLE run_events;
ALTER TABLE run_events_keyless RENAME TO run_events;
CREATE INDEX run_events_run ON run_events (run_id, id);
