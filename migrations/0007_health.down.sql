DROP INDEX IF EXISTS job_executions_started;
ALTER TABLE scheduled_jobs
    DROP COLUMN health, DROP COLUMN consecutive_failures, DROP COLUMN health_baseline_at,
    DROP COLUMN paused_at, DROP COLUMN pause_reason, DROP COLUMN resume_token,
    DROP COLUMN health_status, DROP COLUMN health_reason, DROP COLUMN health_message,
    DROP COLUMN health_since;
