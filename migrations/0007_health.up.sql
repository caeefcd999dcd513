-- Job health (issue #26): the resolved health policy, the failure streak, the pause and the last
-- verdict. The health monitor (leader) writes the verdict and the pause; the dispatcher and the
-- tracker keep `consecutive_failures` in the same statements as the other counters; the
-- reconciler clears the pause when `kubebeat.io/resume` gets a new value.
ALTER TABLE scheduled_jobs
    -- {staleAfterSeconds, maxConsecutiveFailures, maxDurationSeconds, onBreach, metrics},
    -- resolved by the reconciler (staleAfterSeconds with its default).
    ADD COLUMN health jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(health) = 'object'),
    -- Runs in a row (by slot) that ended in FAILURE, LOST, DISPATCH_FAILED or MISSED.
    ADD COLUMN consecutive_failures bigint NOT NULL DEFAULT 0,
    -- Staleness is measured from the later of the last success and this: when the job was
    -- stored, re-enabled, rescheduled or resumed (a new job is not stale at once).
    ADD COLUMN health_baseline_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN pause_reason text,
    -- The last `kubebeat.io/resume` value acted on: only a new value resumes.
    ADD COLUMN resume_token text,
    ADD COLUMN health_status text CHECK (health_status IN ('True', 'False', 'Unknown')),
    ADD COLUMN health_reason text,
    ADD COLUMN health_message text,
    ADD COLUMN health_since timestamptz;

-- The health monitor asks for STARTED runs of jobs with maxDurationSeconds.
CREATE INDEX job_executions_started ON job_executions (job_id, started_at) WHERE state = 'STARTED';
