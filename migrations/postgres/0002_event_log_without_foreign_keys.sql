-- Attempts and events are written by the same statements that write their run, so their
-- run always exists; the foreign keys only added a row lock and a trigger query on `runs`
-- for every attempt and event inserted (four per run), a measurable share of a drain.
-- Runs are never deleted by the server; whoever deletes runs by hand deletes their
-- attempts and events too.
ALTER TABLE run_attempts DROP CONSTRAINT IF EXISTS run_attempts_run_id_fkey;
ALTER TABLE run_events DROP CONSTRAINT IF EXISTS run_events_run_id_fkey;
