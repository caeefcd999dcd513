ALTER TABLE scheduled_jobs DROP COLUMN spec_generation;
ALTER TABLE scheduled_jobs DROP COLUMN spec;
