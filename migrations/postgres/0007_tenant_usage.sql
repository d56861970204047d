-- Per-tenant limits. The tokens each tenant's completed runs reported, per UTC day,
-- provider and model: written in the transaction that completes the runs, read by the
-- daily token and spend budgets (spend is these tokens at the configured prices).
CREATE TABLE tenant_usage (
    tenant            TEXT    NOT NULL,
    day               BIGINT  NOT NULL,  -- UTC days since 1970-01-01
    provider          TEXT    NOT NULL,
    model             TEXT    NOT NULL,  -- '' for a run that had none
    prompt_tokens     BIGINT  NOT NULL,
    completion_tokens BIGINT  NOT NULL,
    PRIMARY KEY (tenant, day, provider, model)
);

-- Each tenant's enqueue token bucket, shared by every process: a row locked while one
-- enqueue refills it and takes a run from it. Only tenants with an enqueue_rate have one.
CREATE TABLE tenant_enqueue_buckets (
    tenant      TEXT             PRIMARY KEY,
    level       DOUBLE PRECISION NOT NULL,  -- runs that may be enqueued at once, at refilled_at
    refilled_at TIMESTAMPTZ      NOT NULL
);
