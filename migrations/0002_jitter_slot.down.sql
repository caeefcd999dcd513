ALTER TABLE scheduled_jobs DROP COLUMN next_slot_at;
