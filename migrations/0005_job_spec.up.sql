-- The spec a job's row was built from, and its generation: the operator's cache lets go of a
-- stored job's spec (at 100,000 jobs that was ~20 MB) and reads it here when it reconciles the
-- job again. NULL: read it from the apiserver.
ALTER TABLE scheduled_jobs ADD COLUMN spec jsonb;
ALTER TABLE scheduled_jobs ADD COLUMN spec_generation bigint;
