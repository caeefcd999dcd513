DROP TABLE IF EXISTS scheduler_leader;
DROP TABLE IF EXISTS job_executions;
DROP TABLE IF EXISTS scheduled_jobs;
DROP TABLE IF EXISTS task_functions;
DROP TABLE IF EXISTS scheduler_job_types;
