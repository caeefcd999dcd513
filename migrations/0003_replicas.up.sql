-- Every replica says it is alive (for the API and the dashboard: leader and replicas).
CREATE TABLE scheduler_replicas (
    identity   text PRIMARY KEY,
    version    text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);
-- The result tracker walks unfinished executions by id.
CREATE INDEX job_executions_tracked ON job_executions (id)
    WHERE state IN ('DISPATCHED', 'STARTED', 'RETRY');
