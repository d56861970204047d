-- Per-tenant limits. The tokens each tenant's completed runs reported, per UTC day,
-- provider and model: written in the transaction that completes the runs, read by the
-- daily token and spend budgets (spend is these tokens at the configured prices). The
-- enqueue buckets live in the process's memory on SQLite (one process per file).
CREATE TABLE tenant_usage (
    tenant            TEXT    NOT NULL,
    day               INTEGER NOT NULL,  -- UTC days since 1970-01-01
    provider          TEXT    NOT NULL,
    model             TEXT    NOT NULL,  -- '' for a run that had none
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (tenant, day, provider, model)
);
