-- With jitter a job is due at slot + delay; the slot itself is kept so the claim knows which
-- slot it is claiming.
ALTER TABLE scheduled_jobs ADD COLUMN next_slot_at timestamptz;
UPDATE scheduled_jobs SET next_slot_at = next_run_at;
