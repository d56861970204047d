-- Batches: runs submitted together in one `POST /batches`, watched, paused, resumed and
-- cancelled together. Each run of a batch names it in `runs.batch` (the batch id as text);
-- a free-text `batch` given to `POST /enqueue` groups runs for fairness and event filters
-- without a row here.
CREATE TABLE batches (
    id          TEXT        PRIMARY KEY,       -- a UUIDv7 string, like run ids
    tenant      TEXT,                          -- the owner; NULL in open mode
    metadata    JSON,
    run_count   INTEGER     NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    paused      BOOLEAN     NOT NULL DEFAULT FALSE, -- the claim skips queued runs of a paused batch
    cancelled_at TIMESTAMPTZ,
    toggled_at  TIMESTAMPTZ                     -- last pause/resume/cancel; the cooldown counts from here
);
-- Listing batches newest first, for everyone and per tenant.
CREATE INDEX batches_created ON batches (created_at DESC, id DESC);
CREATE INDEX batches_tenant_created ON batches (tenant, created_at DESC, id DESC);
-- A batch's progress (counts by status) and its results.
CREATE INDEX runs_batch ON runs (batch, status) WHERE batch IS NOT NULL;
