-- Fan-out: planning splits a job into work items (key ranges of a type, sized by bytes), and
-- every item is claimed, leased, checkpointed and retried on its own by any exporter. The job
-- is Complete when its last item is done, in that item's last checkpoint.
--
-- Items of jobs planned before this migration are part 0 over the whole type ('' .. NULL),
-- exactly what they covered before.
ALTER TABLE export_work_items
    ADD COLUMN part             integer NOT NULL DEFAULT 0,
    -- ids in (lo_id, hi_id]; hi_id NULL: to the end of the type.
    ADD COLUMN lo_id            text    NOT NULL DEFAULT '',
    ADD COLUMN hi_id            text,
    ADD COLUMN lease_owner      text,
    ADD COLUMN lease_expires_at timestamptz,
    -- failures without progress (reset by a checkpoint that records a file)
    ADD COLUMN attempts         integer NOT NULL DEFAULT 0,
    ADD COLUMN error            text,
    ADD COLUMN public_error     text;
ALTER TABLE export_work_items DROP CONSTRAINT export_work_items_pkey;
ALTER TABLE export_work_items ADD PRIMARY KEY (job_id, resource_type, part);
-- The claim looks for open items only.
CREATE INDEX export_work_items_open ON export_work_items (job_id) WHERE NOT done;
