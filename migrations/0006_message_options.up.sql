-- The Celery message options a job's messages carry (exchange, routingKey, headers, timeLimit,
-- softTimeLimit, ignoreResult), resolved from the job and its TaskFunction. Read with the job's
-- other message fields when a run is published, so every replica (and a re-publish after a
-- failover) sends the same message. '{}': none, the messages of earlier releases.
ALTER TABLE scheduled_jobs ADD COLUMN message_options jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(message_options) = 'object');
