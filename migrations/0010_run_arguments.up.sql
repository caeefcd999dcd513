-- Run arguments (issue #27): each execution records the arguments it was sent with (the
-- effective ones, for every run: copied from its job when claimed, or a manual run's overrides
-- applied) and who asked for a manual run (the API caller, or the trigger value's `by=` part).
-- The outbox publishes a run with its own arguments, so a run claimed ahead or re-published
-- after a failover goes out exactly as recorded. NULL: a run claimed by an earlier release
-- (published with its job's arguments).
ALTER TABLE job_executions
    ADD COLUMN args jsonb CHECK (args IS NULL OR jsonb_typeof(args) = 'array'),
    ADD COLUMN kwargs jsonb CHECK (kwargs IS NULL OR jsonb_typeof(kwargs) = 'object'),
    ADD COLUMN requested_by text CHECK (requested_by IS NULL OR length(requested_by) <= 253);

-- The TaskFunction's `spec.parameters` as validated, for the API to check a manual run's
-- overrides without reading the apiserver.
ALTER TABLE task_functions ADD COLUMN parameters jsonb;

-- The status writer's `lastManualRun` and `kube-beat trigger --wait`: a job's latest manual run.
CREATE INDEX job_executions_manual ON job_executions (job_id, id DESC) WHERE trigger = 'manual';
