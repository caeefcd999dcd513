ALTER TABLE job_executions RESET (fillfactor, autovacuum_vacuum_scale_factor,
                                  autovacuum_analyze_scale_factor);
ALTER TABLE scheduled_jobs RESET (fillfactor, autovacuum_vacuum_scale_factor,
                                  autovacuum_analyze_scale_factor);
DROP INDEX IF EXISTS job_executions_finished;
DROP INDEX IF EXISTS scheduled_jobs_live_queue;
