-- Measured at 100,000 jobs each running every minute (docs/capacity.md).
-- The queue set (queue-depth sampler, worker probe) is read by a loose index scan: one index
-- probe per distinct queue instead of a scan of every job.
CREATE INDEX scheduled_jobs_live_queue ON scheduled_jobs (queue) WHERE deleted_at IS NULL;
-- The history prune skips each job's newest `historyLimit` finished runs: from this index alone,
-- without reading each run's row to learn its state.
CREATE INDEX job_executions_finished ON job_executions (job_id, scheduled_for DESC, id DESC)
    WHERE state NOT IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY');
-- Every run rewrites its job's row (the claim, the tracker's counters, health) and its own row a
-- few times: room on each page for the new versions, and vacuum after 2 % of the rows changed
-- rather than Postgres' default 20 % (hours at 100,000 jobs).
ALTER TABLE scheduled_jobs SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
                                autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE job_executions SET (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02,
                                autovacuum_analyze_scale_factor = 0.05);
