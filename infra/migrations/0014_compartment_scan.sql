-- Reading a compartment by scanning. A job whose patients are most of the database's (every
-- Patient-level export without `patient`) read each compartment type as a hash semi-join of
-- the type with its `compartment` rows joined to the job's patients: a second table read and
-- hashed per work item, twice the cost of reading the type alone (×10 Observations: 315-337 ms
-- against 148-161 ms, `EXPLAIN ANALYZE`), and the references of its AdditionalResources were
-- the same join again with `resource_refs`. Each resource (and each reference row) now carries
-- its compartment's patients, so such a job reads a type as the system level does and tests
-- each row against a hash of the job's patients. `compartment` stays: it finds a few patients'
-- resources (Group and `patient` exports, organizeOutputBy=Patient) without reading a type.
--
-- `patients`: the ids of the Patients whose compartment holds the current version (NULL: in
-- none), written with the version (and with its `compartment` rows); a deleted resource keeps
-- it, as it keeps its `compartment` rows.
--
-- Upgrading a loaded database rewrites every row that is in a compartment (one UPDATE per
-- table, in the migration's transaction): the old row versions stay until (auto)VACUUM
-- reclaims them, so a large database wants a `VACUUM ANALYZE resources, resource_refs` after.
ALTER TABLE resources ADD COLUMN patients text[];
ALTER TABLE resource_refs ADD COLUMN patients text[];
UPDATE resources r SET patients = c.p
FROM (SELECT resource_type, resource_id, array_agg(patient_id ORDER BY patient_id) AS p
      FROM compartment GROUP BY resource_type, resource_id) c
WHERE r.resource_type = c.resource_type AND r.id = c.resource_id;
UPDATE resource_refs f SET patients = r.patients
FROM resources r
WHERE r.resource_type = f.source_type AND r.id = f.source_id AND r.patients IS NOT NULL;
-- Nothing is estimated from them (the test is on an element), and ANALYZE need not sample them.
ALTER TABLE resources ALTER COLUMN patients SET STATISTICS 0;
ALTER TABLE resource_refs ALTER COLUMN patients SET STATISTICS 0;

-- `compartment` keeps one index: its rows are found by patient (Group and `patient` exports,
-- organizeOutputBy=Patient, the references of a job that does not scan), and a reloaded
-- resource's own rows by the patients on its row. The key by resource cost a ×10 load 8-10 %
-- (9.1-9.7 s against 10.0-11.6 s, the same build and data).
ALTER TABLE compartment DROP CONSTRAINT compartment_pkey;
DROP INDEX compartment_patient;
ALTER TABLE compartment ADD PRIMARY KEY (patient_id, resource_type, resource_id);

-- How planning chose to read a job's compartment types: NULL by its `compartment` rows; else
-- by scanning, with this many patients (the read sizes the hash of them by it).
ALTER TABLE export_jobs ADD COLUMN scan_patients bigint;
