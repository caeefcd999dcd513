-- Calendars (issue #27): one row per ScheduleCalendar (cluster-scoped, so its name is its
-- identity), with its spec as the reconciler read it; and the names each job references.
-- The claim reads a job's calendars from here in the same statement as the job, so an edited
-- calendar applies to the next claim of every job using it, without re-reconciling the jobs.
CREATE TABLE schedule_calendars (
    name text PRIMARY KEY,
    uid text NOT NULL,
    generation bigint NOT NULL,
    -- The ScheduleCalendar spec; the dispatcher validates it again at each claim (a row it
    -- cannot read skips the slot rather than running it).
    spec jsonb NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    valid boolean NOT NULL,
    invalid_message text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE scheduled_jobs
    -- `spec.calendars`, in the job's order (the first that excludes a slot names the reason).
    ADD COLUMN calendars text[] NOT NULL DEFAULT '{}';
