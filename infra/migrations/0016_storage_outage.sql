-- Since when the storage of an item's files has been unavailable (S3 timing out, unreachable or
-- answering 5xx; a storage call overdue): such failures do not count as attempts, so an outage
-- of minutes does not use up MAX_ATTEMPTS. The item's job fails once the outage has lasted
-- STORAGE_OUTAGE_SECONDS. Cleared by the item's next progress.
ALTER TABLE export_work_items ADD COLUMN storage_down_since timestamptz;
