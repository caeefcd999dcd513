ALTER TABLE scheduled_jobs DROP COLUMN calendars;
DROP TABLE schedule_calendars;
