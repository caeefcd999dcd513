DROP INDEX IF EXISTS job_executions_backfill;
ALTER TABLE job_executions DROP COLUMN IF EXISTS backfill_id;
DROP TABLE IF EXISTS backfills;
