-- A run is claimed up to a few seconds before its time (so a burst of runs due in the same second
-- is claimed ahead and only published when due): when it may be published. NULL: at once.
ALTER TABLE job_executions ADD COLUMN publish_after timestamptz;
-- The due time of the latest slot a job has claimed: a job is claimed ahead by one slot at most.
ALTER TABLE scheduled_jobs ADD COLUMN claimed_until timestamptz;
