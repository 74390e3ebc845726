-- Keys compared by their bytes. Every text that holds a resource type, a resource id or a
-- patient id takes the "C" collation: Postgres then compares them with memcmp instead of the
-- database's collation (strcoll, which copies both strings to compare them; en_US also
-- ignores punctuation at first). A load inserts every resource's key into the btrees of
-- resources, compartment and resource_refs: loading the ×10 set by hand, alternating, took
-- 2-3 % less of the machine's CPU (docs/BENCHMARKS.md), more where the collation is en_US.
-- Ids are FHIR ids ([A-Za-z0-9\-\.]{1,64}) and types are ASCII names: no user sees the
-- difference except in the order of lines in a file, which the spec leaves open. Every
-- column takes the same collation, so no statement ever compares two of different ones, and
-- the exporter's key ranges (cut by bytes) are the database's order under any database
-- collation.
--
-- Upgrading: no table is rewritten (the type is the same); each index on these columns is
-- rebuilt. A running export's key ranges and cursors were cut in the old order, which this
-- migration cannot prove bytewise: a planned job that is still Queued or Active fails, with a
-- message to start it again, rather than risk a repeated or missing resource.
UPDATE export_jobs
SET status = 'Failed',
    error = 'the server was upgraded while this export ran (0015_bytewise_keys)',
    public_error = 'The server was upgraded while this export ran; start the export again.',
    completed_at = now(), expires_at = now() + interval '24 hours',
    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE status IN ('Queued', 'Active') AND planned;

ALTER TABLE resources
    ALTER COLUMN resource_type TYPE text COLLATE "C",
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN patients TYPE text[] COLLATE "C";
ALTER TABLE resource_history
    ALTER COLUMN resource_type TYPE text COLLATE "C",
    ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE compartment
    ALTER COLUMN patient_id TYPE text COLLATE "C",
    ALTER COLUMN resource_type TYPE text COLLATE "C",
    ALTER COLUMN resource_id TYPE text COLLATE "C";
ALTER TABLE resource_refs
    ALTER COLUMN source_type TYPE text COLLATE "C",
    ALTER COLUMN source_id TYPE text COLLATE "C",
    ALTER COLUMN target_types TYPE text[] COLLATE "C",
    ALTER COLUMN target_ids TYPE text[] COLLATE "C",
    ALTER COLUMN patients TYPE text[] COLLATE "C";
ALTER TABLE provenance_targets
    ALTER COLUMN provenance_id TYPE text COLLATE "C",
    ALTER COLUMN target_type TYPE text COLLATE "C",
    ALTER COLUMN target_id TYPE text COLLATE "C";
ALTER TABLE export_jobs
    ALTER COLUMN group_id TYPE text COLLATE "C";
ALTER TABLE export_job_patients
    ALTER COLUMN patient_id TYPE text COLLATE "C";
ALTER TABLE export_job_refs
    ALTER COLUMN source_type TYPE text COLLATE "C",
    ALTER COLUMN source_id TYPE text COLLATE "C",
    ALTER COLUMN target_type TYPE text COLLATE "C",
    ALTER COLUMN target_id TYPE text COLLATE "C";
ALTER TABLE export_read_ranges
    ALTER COLUMN resource_type TYPE text COLLATE "C",
    ALTER COLUMN after_id TYPE text COLLATE "C",
    ALTER COLUMN upto_id TYPE text COLLATE "C";
ALTER TABLE export_work_items
    ALTER COLUMN resource_type TYPE text COLLATE "C",
    ALTER COLUMN cursor_id TYPE text COLLATE "C",
    ALTER COLUMN lo_id TYPE text COLLATE "C",
    ALTER COLUMN hi_id TYPE text COLLATE "C";
ALTER TABLE export_files
    ALTER COLUMN resource_type TYPE text COLLATE "C";
