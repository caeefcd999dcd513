ALTER TABLE scheduled_jobs DROP COLUMN claimed_until;
ALTER TABLE job_executions DROP COLUMN publish_after;
