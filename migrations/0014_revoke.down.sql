ALTER TABLE job_executions DROP COLUMN IF EXISTS revoked_by,
    DROP COLUMN IF EXISTS revoke_requested_at, DROP COLUMN IF EXISTS worker;
