-- Status polls are recorded apart from the job row. Updating export_jobs on every poll held the
-- row's lock for an instant, and an exporter claiming the job in that instant (FOR UPDATE SKIP
-- LOCKED) skipped it and slept until the next RepeatPeriod: a client that polled right after the
-- kick-off could wait a minute for an export that takes a second. No foreign key either: its
-- KEY SHARE lock on the job row would conflict with the claim's FOR UPDATE the same way.
CREATE TABLE export_job_polls (
    job_id         uuid        PRIMARY KEY,
    last_polled_at timestamptz NOT NULL
);
INSERT INTO export_job_polls (job_id, last_polled_at)
SELECT id, last_polled_at FROM export_jobs WHERE last_polled_at IS NOT NULL;
ALTER TABLE export_jobs DROP COLUMN last_polled_at;
