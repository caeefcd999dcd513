-- Who asked to cancel a run, and when (`POST /api/v1/executions/{id}/revoke`). The run's final
-- state still comes from the worker through the result backend (REVOKED when the revoke reached
-- it in time; SUCCESS or FAILURE when the run ended first), so the request is kept beside it.
-- And the worker that ran it (its node name, `celery@host`), where the result backend names it:
-- the run page's story.
ALTER TABLE job_executions ADD COLUMN revoked_by text, ADD COLUMN revoke_requested_at timestamptz,
    ADD COLUMN worker text;
