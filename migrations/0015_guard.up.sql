-- The worker-side guard's claims (python/kube_beat_celery, the Postgres store): one row per
-- (Celery task id, attempt) a guarded worker started, with how many further deliveries of it
-- the guard suppressed (broker redeliveries). The guard writes it (and makes it, with this same
-- definition, in a database kube-beat does not manage); kube-beat reads `duplicates` into each
-- run's `duplicates_suppressed` and the `kube_beat_guard_duplicates_suppressed` gauge.
CREATE TABLE IF NOT EXISTS guard_claims (
    task_id               text        NOT NULL,
    attempt               integer     NOT NULL,
    state                 text        NOT NULL DEFAULT 'running',
    worker                text        NOT NULL,
    job                   text,
    slot                  text,
    claimed_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz,
    duplicates            integer     NOT NULL DEFAULT 0,
    last_duplicate_at     timestamptz,
    last_duplicate_worker text,
    takeovers             integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt)
);
CREATE INDEX IF NOT EXISTS guard_claims_claimed_at ON guard_claims (claimed_at);
CREATE INDEX IF NOT EXISTS guard_claims_last_duplicate_at ON guard_claims (last_duplicate_at)
    WHERE last_duplicate_at IS NOT NULL;
