-- Fair dispatch (src/store/fair.rs). The groups that rotate are a lane's (provider, class)
-- queued runs of one tenant and batch: this index lists them one probe per group (a loose
-- scan), and reads each group's runs in dispatch order, however long the backlog.
CREATE INDEX runs_fair ON runs
    (provider, class, (COALESCE(tenant, '')), (COALESCE(batch, '')), priority, due_at)
    WHERE status = 'queued';

-- One row per rotation (the tenants of a lane, the batches of a tenant in a lane): its
-- virtual time and the passes of the members ahead of it, as JSON. Claims read and write
-- it under the claim lock, so every process continues the same rotation.
CREATE TABLE fair_rotations (
    scope    TEXT PRIMARY KEY,
    rotation JSON NOT NULL
);
