-- Rows holding several schedules (a JSON array) cannot be read by the previous version: it
-- parks them ("stored schedule is unreadable") until they are re-applied with one schedule.
ALTER TABLE scheduled_jobs
    DROP COLUMN end_time, DROP COLUMN max_runs, DROP COLUMN scheduled_runs,
    DROP COLUMN last_scheduled_run_at;
