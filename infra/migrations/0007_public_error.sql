-- A failed job keeps two messages: `error`, the internal one (paths, S3 keys, database text) for
-- operators (logs, `bulk-export jobs`), and `public_error`, what the client's status request
-- says. NULL public_error (jobs failed before this migration): a generic message is shown.
ALTER TABLE export_jobs ADD COLUMN public_error text;
