-- When a status URL was last answered with 202, to refuse over-polling with 429.
ALTER TABLE export_jobs ADD COLUMN last_polled_at timestamptz;
-- Jobs still running per client, for the concurrent-export limit.
CREATE INDEX export_jobs_running_per_client ON export_jobs (client_id)
    WHERE status IN ('Queued', 'Active', 'CancellationRequested');
