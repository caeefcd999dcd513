ALTER TABLE scheduled_jobs DROP COLUMN IF EXISTS row_digest;
