-- The references a Group (or listed-patients) export follows, fixed when it is planned.
--
-- Every AdditionalResources type of such a job, and its dangling-reference check, had joined the
-- job's compartment rows to `resource_refs` again (3,733 index probes for 10 patients, 37 ms on
-- 1.2 M resources and more as the index grows; 14 such statements per export). Planning now
-- writes the job's references to the AdditionalResources types once; the items read them by
-- (job, type). Patient-level exports of every patient keep the join (planned with hash joins,
-- it reads each table once).
CREATE TABLE export_job_refs (
    job_id      uuid NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    source_type text NOT NULL,
    source_id   text NOT NULL
);
CREATE INDEX export_job_refs_target ON export_job_refs (job_id, target_type, target_id);
