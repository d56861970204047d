-- Every running process: what it reports on each beat, for the cluster view in /health.
-- A row whose beat is older than a few periods belongs to a process that is gone; the
-- leader deletes such rows.
CREATE TABLE replicas (
    id           UUID        PRIMARY KEY,  -- the process's worker id
    version      TEXT        NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    slots        INTEGER     NOT NULL,
    in_flight    INTEGER     NOT NULL
);

-- The maintenance leader: at most one row. Whoever holds an unexpired lease leads; the
-- term grows by one at every change of holder.
CREATE TABLE leader (
    singleton        BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    holder           UUID        NOT NULL,
    term             BIGINT      NOT NULL,
    since            TIMESTAMPTZ NOT NULL,
    lease_expires_at TIMESTAMPTZ NOT NULL
);

-- Retention: finished runs by status and age, so each pass reads only what it deletes.
CREATE INDEX runs_finished ON runs (status, finished_at) WHERE finished_at IS NOT NULL;
