-- Batches finish, and may be submitted idempotently: `finished_at` is set once, by the
-- sweep that writes the batch's `batch_finished` event (a conditional update, so exactly
-- once across processes); `idem_key` (tenant + the body's `idempotency_key`) makes a
-- retried `POST /batches` answer with the first batch instead of a second copy.
ALTER TABLE batches
    ADD COLUMN finished_at TIMESTAMPTZ,
    ADD COLUMN idem_key    TEXT;
CREATE UNIQUE INDEX batches_idem ON batches (idem_key) WHERE idem_key IS NOT NULL;
-- The sweep's scan: only batches not yet finished, a handful at any time.
CREATE INDEX batches_open ON batches (created_at) WHERE finished_at IS NULL;

-- Listing runs newest first with keyset pagination on (created_at, id), so a page is an
-- index range of `limit` entries whatever the table's size.
--
-- Write cost on the hot path: until now the primary key was the only index every run
-- version enters (updates that change `status` are never HOT, so a run's insert, claim
-- and completion each add an entry to every index whose predicate the new version meets).
-- So:
-- * `runs_created` is the one new index on every version: the unfiltered page, the
--   `created_after`/`created_before` ranges, and the `provider`/`class` filters (few
--   distinct values, so walking it and filtering stays near `limit` rows);
-- * tenant and batch pages get partial indexes that runs without a tenant or batch never
--   enter;
-- * status pages: `completed`, the bulk of any mature table and the most frequent write,
--   is found by walking `runs_created`; every other status is a minority whose page comes
--   from `runs_status_created`, which a completed version never enters (the listing
--   query repeats the `status <> 'completed'` predicate so both databases choose it).
CREATE INDEX runs_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_tenant_created ON runs (tenant, created_at DESC, id DESC)
    WHERE tenant IS NOT NULL;
CREATE INDEX runs_batch_created ON runs (batch, created_at DESC, id DESC)
    WHERE batch IS NOT NULL;
CREATE INDEX runs_status_created ON runs (status, created_at DESC, id DESC)
    WHERE status <> 'completed';
