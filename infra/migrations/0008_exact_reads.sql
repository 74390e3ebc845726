-- Exact at transactionTime under concurrent writes.
--
-- Each version of a resource records the transaction that wrote it (`written_xid`), and each
-- page the exporter reads in phase 0 records the snapshot it was read under. Phase 1 (the
-- version current at transactionTime of resources changed since) then exports a resource only
-- if phase 0 did not: when the change that followed its transactionTime version was already
-- visible to the phase-0 page that covered its id. NULL written_xid (rows written before this
-- migration) counts as visible, the behaviour before it.
ALTER TABLE resources ADD COLUMN written_xid xid8;
ALTER TABLE resources ALTER COLUMN written_xid SET DEFAULT pg_current_xact_id();
ALTER TABLE resource_history ADD COLUMN written_xid xid8;

CREATE TABLE export_read_ranges (
    job_id        uuid        NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    resource_type text        NOT NULL,
    -- ids in (after_id, upto_id] were read under `snap`; upto_id NULL: to the end.
    after_id      text        NOT NULL,
    upto_id       text,
    snap          pg_snapshot NOT NULL
);
CREATE INDEX export_read_ranges_lookup ON export_read_ranges (job_id, resource_type, after_id);

-- What the loader refuses, the database refuses too: a stored resource is one line (ndjson
-- framing) and its JSON id and resourceType are its key (no duplicate ids in an export).
ALTER TABLE resources ADD CONSTRAINT resources_one_line
    CHECK (strpos(resource, E'\n') = 0 AND strpos(resource, E'\r') = 0);
ALTER TABLE resources ADD CONSTRAINT resources_key_matches_json
    CHECK ((resource::json ->> 'id') = id AND (resource::json ->> 'resourceType') = resource_type);
