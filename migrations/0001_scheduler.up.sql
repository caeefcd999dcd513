-- kube-beat's working state. Desired state lives in Kubernetes; this is what the leader acts on.

CREATE TABLE scheduler_job_types (
    id          smallint PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text NOT NULL
);
INSERT INTO scheduler_job_types (id, name, description) VALUES
    (1, 'interval', 'every hours/minutes/seconds, anchored at startTime or first store'),
    (2, 'cron', 'Kubernetes CronJob expression in a time zone'),
    (3, 'date', 'once, at an instant');

-- One row per TaskFunction (cluster-scoped, so its name is its identity).
CREATE TABLE task_functions (
    id                 bigserial PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    uid                text NOT NULL,
    generation         bigint NOT NULL,
    task               text NOT NULL,
    queue              text NOT NULL,
    priority           smallint CHECK (priority BETWEEN 0 AND 9),
    expires_seconds    bigint CHECK (expires_seconds > 0),
    default_args       jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(default_args) = 'array'),
    default_kwargs     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(default_kwargs) = 'object'),
    allowed_namespaces text[] NOT NULL DEFAULT '{}',
    description        text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- One row per ScheduledJob, keyed by the object's uid. A deleted job keeps its row (deleted_at)
-- so its executions stay queryable until retention prunes them.
CREATE TABLE scheduled_jobs (
    id                        bigserial PRIMARY KEY,
    uid                       text NOT NULL UNIQUE,
    namespace                 text NOT NULL,
    name                      text NOT NULL,
    generation                bigint NOT NULL,
    task_function             text NOT NULL,
    task_function_id          bigint REFERENCES task_functions (id) ON DELETE SET NULL,
    task_name                 text NOT NULL,
    job_type_id               smallint NOT NULL REFERENCES scheduler_job_types (id),
    schedule_config           jsonb NOT NULL,
    schedule_summary          text NOT NULL,
    time_zone                 text NOT NULL DEFAULT 'UTC',
    start_time                timestamptz,
    anchor_time               timestamptz NOT NULL,
    args                      jsonb NOT NULL CHECK (jsonb_typeof(args) = 'array'),
    kwargs                    jsonb NOT NULL CHECK (jsonb_typeof(kwargs) = 'object'),
    queue                     text NOT NULL,
    priority                  smallint CHECK (priority BETWEEN 0 AND 9),
    expires_seconds           bigint CHECK (expires_seconds > 0),
    -- enabled = valid AND NOT suspended AND NOT deleted: the only flag the dispatcher reads.
    enabled                   boolean NOT NULL,
    suspended                 boolean NOT NULL DEFAULT false,
    valid                     boolean NOT NULL DEFAULT true,
    invalid_reason            text,
    invalid_message           text,
    concurrency_policy        text NOT NULL DEFAULT 'Allow'
                              CHECK (concurrency_policy IN ('Allow', 'Forbid', 'Replace')),
    starting_deadline_seconds bigint CHECK (starting_deadline_seconds >= 0),
    jitter_seconds            bigint NOT NULL DEFAULT 0 CHECK (jitter_seconds >= 0),
    execution_timeout_seconds bigint NOT NULL DEFAULT 3600 CHECK (execution_timeout_seconds > 0),
    history_limit             integer NOT NULL DEFAULT 100 CHECK (history_limit >= 0),
    description               text,
    next_run_at               timestamptz,
    last_run_at               timestamptz,
    last_success_at           timestamptz,
    total_runs                bigint NOT NULL DEFAULT 0,
    succeeded                 bigint NOT NULL DEFAULT 0,
    failed                    bigint NOT NULL DEFAULT 0,
    missed                    bigint NOT NULL DEFAULT 0,
    skipped                   bigint NOT NULL DEFAULT 0,
    last_trigger              text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    deleted_at                timestamptz
);
CREATE UNIQUE INDEX scheduled_jobs_live_name ON scheduled_jobs (namespace, name) WHERE deleted_at IS NULL;
-- The dispatcher's hot query: enabled jobs by due time.
CREATE INDEX scheduled_jobs_due ON scheduled_jobs (next_run_at) WHERE enabled;
CREATE INDEX scheduled_jobs_task_function ON scheduled_jobs (task_function) WHERE deleted_at IS NULL;
CREATE INDEX scheduled_jobs_deleted ON scheduled_jobs (deleted_at) WHERE deleted_at IS NOT NULL;

-- One row per run. (job_id, slot_key) is the exactly-once claim: slot_key is the slot instant for
-- scheduled runs and the trigger value for manual ones.
CREATE TABLE job_executions (
    id              bigserial PRIMARY KEY,
    job_id          bigint NOT NULL REFERENCES scheduled_jobs (id) ON DELETE CASCADE,
    slot_key        text NOT NULL,
    task_id         text NOT NULL UNIQUE,
    scheduled_for   timestamptz NOT NULL,
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'catchup')),
    state           text NOT NULL CHECK (state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY',
                        'SUCCESS', 'FAILURE', 'REVOKED', 'LOST', 'DISPATCH_FAILED', 'SKIPPED',
                        'MISSED', 'SHADOW')),
    coalesced_slots integer NOT NULL DEFAULT 1,
    publish_attempts integer NOT NULL DEFAULT 0,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    dispatched_at   timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    result          jsonb,
    error           text,
    traceback       text,
    leader_epoch    bigint NOT NULL,
    UNIQUE (job_id, slot_key)
);
CREATE INDEX job_executions_job_time ON job_executions (job_id, scheduled_for DESC);
-- The outbox and the result tracker scan unfinished executions only.
CREATE INDEX job_executions_unfinished ON job_executions (state, claimed_at)
    WHERE state IN ('PENDING', 'DISPATCHED', 'STARTED', 'RETRY');
CREATE INDEX job_executions_recent ON job_executions (claimed_at DESC);

-- The fencing epoch: bumped by every new leader; every claim checks it in its transaction.
CREATE TABLE scheduler_leader (
    id          smallint PRIMARY KEY CHECK (id = 1),
    epoch       bigint NOT NULL,
    holder      text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO scheduler_leader (id, epoch, holder) VALUES (1, 0, '');
