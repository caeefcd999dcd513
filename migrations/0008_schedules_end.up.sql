-- An end for a job (issue #27): `spec.endTime` and `spec.maxRuns`, and the count of scheduled
-- runs that `maxRuns` is compared with. Several schedules per job need no column: their list is
-- stored in `schedule_config` (a JSON array instead of an object).
ALTER TABLE scheduled_jobs
    -- No slot after this instant.
    ADD COLUMN end_time timestamptz,
    -- Stop after this many scheduled runs.
    ADD COLUMN max_runs bigint CHECK (max_runs IS NULL OR max_runs >= 1),
    -- Runs claimed by the schedule (triggers schedule and catchup), not manual runs, not
    -- SKIPPED or MISSED slots. Kept apart from total_runs (which counts manual runs too) and
    -- from job_executions (which retention prunes). Never reset: raising maxRuns runs the rest.
    ADD COLUMN scheduled_runs bigint NOT NULL DEFAULT 0,
    -- The slot of the last such run: when maxRuns was reached, for the Complete condition.
    ADD COLUMN last_scheduled_run_at timestamptz;
