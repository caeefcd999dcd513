DROP INDEX job_executions_tracked;
DROP TABLE scheduler_replicas;
