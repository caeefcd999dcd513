-- Backfill runs are kept, as manual runs (the older check knows no `backfill`).
UPDATE job_executions SET trigger = 'manual' WHERE trigger = 'backfill';
ALTER TABLE job_executions DROP CONSTRAINT job_executions_trigger_check;
ALTER TABLE job_executions ADD CONSTRAINT job_executions_trigger_check
    CHECK (trigger IN ('schedule', 'manual', 'catchup'));
DROP INDEX IF EXISTS job_executions_backfill;
ALTER TABLE job_executions DROP COLUMN IF EXISTS backfill_id;
DROP TABLE IF EXISTS backfills;
