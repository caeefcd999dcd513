DROP INDEX IF EXISTS job_executions_manual;
ALTER TABLE task_functions DROP COLUMN parameters;
ALTER TABLE job_executions DROP COLUMN args, DROP COLUMN kwargs, DROP COLUMN requested_by;
