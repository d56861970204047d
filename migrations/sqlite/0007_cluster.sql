-- The process and the maintenance leader, as on PostgreSQL (one process per file here, so
-- it always leads). Times are INTEGER milliseconds since the Unix epoch (UTC).
CREATE TABLE replicas (
    id           BLOB    PRIMARY KEY,
    version      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    slots        INTEGER NOT NULL,
    in_flight    INTEGER NOT NULL
);

-- `INT`, not `INTEGER`: an INTEGER PRIMARY KEY would be the rowid, which ignores the default.
CREATE TABLE leader (
    singleton        INT     NOT NULL PRIMARY KEY DEFAULT 1 CHECK (singleton = 1),
    holder           BLOB    NOT NULL,
    term             INTEGER NOT NULL,
    since            INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL
);

-- Retention: finished runs by status and age, so each pass reads only what it deletes.
CREATE INDEX runs_finished ON runs (status, finished_at) WHERE finished_at IS NOT NULL;
