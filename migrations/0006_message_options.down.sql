ALTER TABLE scheduled_jobs DROP COLUMN message_options;
