-- Backfills (issue #27): a request to run every slot of a job's schedule in [from_time, to_time]
-- once, at most max_parallel unfinished at a time. The leader works through the running ones
-- (src/backfill/runner.rs), moving `cursor` on in the same fenced transaction as the executions
-- it inserts, so a new leader continues from the stored cursor.
CREATE TABLE backfills (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES scheduled_jobs (id) ON DELETE CASCADE,
    -- The request's id (the `kubebeat.io/backfill` annotation's `id`): one backfill per id.
    request_key text NOT NULL CHECK (length(request_key) BETWEEN 1 AND 64),
    from_time timestamptz NOT NULL,
    to_time timestamptz NOT NULL CHECK (to_time >= from_time),
    max_parallel integer NOT NULL DEFAULT 1 CHECK (max_parallel BETWEEN 1 AND 100),
    -- The job's schedule when the backfill was requested: its slots do not move if the job's
    -- schedule changes meanwhile.
    schedule_config jsonb NOT NULL,
    time_zone text NOT NULL,
    start_time timestamptz,
    anchor_time timestamptz NOT NULL,
    -- The last slot handed out (NULL: none yet; the next slot is the first at or after from_time).
    cursor timestamptz,
    state text NOT NULL DEFAULT 'Running'
        CHECK (state IN ('Running', 'Complete', 'Failed', 'Cancelled')),
    message text,
    total bigint NOT NULL DEFAULT 0,
    dispatched bigint NOT NULL DEFAULT 0,
    already_ran bigint NOT NULL DEFAULT 0,
    succeeded bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    requested_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (job_id, request_key)
);
CREATE INDEX backfills_running ON backfills (id) WHERE state = 'Running';

ALTER TABLE job_executions
    ADD COLUMN backfill_id bigint REFERENCES backfills (id) ON DELETE SET NULL;
CREATE INDEX job_executions_backfill ON job_executions (backfill_id, state)
    WHERE backfill_id IS NOT NULL;

-- Backfill runs are recorded with trigger `backfill`.
ALTER TABLE job_executions DROP CONSTRAINT job_executions_trigger_check;
ALTER TABLE job_executions ADD CONSTRAINT job_executions_trigger_check
    CHECK (trigger IN ('schedule', 'manual', 'catchup', 'backfill'));
