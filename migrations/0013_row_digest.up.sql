-- What the reconciler stored each job's row from (a SHA-256 of every column it writes but the
-- next run): a re-store of an unchanged job (a new leader reconciles every job) is answered by
-- reading the row, not by locking and rewriting it under the dispatcher's claims.
-- NULL (rows stored before this migration) never matches: such a row is rewritten once.
ALTER TABLE scheduled_jobs ADD COLUMN row_digest bytea;
