-- Loading at the rate of the hardware: less work per stored resource, the same guarantees.
--
-- 1. The key check. json_populate_record de-escaped every string of every resource into a hash
--    of its members (3.5 s of 8.6 s for the resources of the ×10 set, COPY into the table with
--    its key). A resource whose text begins with its resourceType and id as its first two
--    members (how the loader's sources, Synthea and FHIR servers write them) is checked by a
--    prefix comparison, and its JSON is still validated (the `::json` cast lexes it without
--    building anything: 1.2 s); any other member order takes the full comparison as before.
--    Both forms compare the key with the member that names it; JSON with duplicate member
--    names is not FHIR JSON, and the loader refuses a duplicated resourceType or id. NOT
--    VALID: stored rows passed the full comparison, which this form only relaxes in speed.
ALTER TABLE resources DROP CONSTRAINT resources_key_matches_json;
ALTER TABLE resources ADD CONSTRAINT resources_key_matches_json
    CHECK (resource::json IS NOT NULL
           AND (starts_with(resource, '{"resourceType":' || to_json(resource_type)::text
                                      || ',"id":' || to_json(id)::text || ',')
                OR json_populate_record(NULL::fhir_resource_key, resource::json)
                   IS NOT DISTINCT FROM ROW(resource_type, id)::fhir_resource_key)) NOT VALID;

-- 2. References: one row per source with its targets as two parallel arrays, instead of one row
--    per reference. Every statement reads references from their source (the key); the row per
--    reference made the key the largest structure of the database (195 MB for the 1.16 M
--    references of the ×10 set against 38 MB for the resources' key), and keeping it cost more
--    than storing the resources' text (5.5 s of a single-connection COPY, 1.3 s of it the heap).
ALTER TABLE resource_refs RENAME TO resource_refs_by_target;
CREATE TABLE resource_refs (
    source_type  text   NOT NULL,
    source_id    text   NOT NULL,
    target_types text[] NOT NULL,
    target_ids   text[] NOT NULL,
    PRIMARY KEY (source_type, source_id),
    CHECK (cardinality(target_types) = cardinality(target_ids))
);
INSERT INTO resource_refs (source_type, source_id, target_types, target_ids)
SELECT source_type, source_id,
       array_agg(target_type ORDER BY target_type, target_id),
       array_agg(target_id ORDER BY target_type, target_id)
FROM resource_refs_by_target
GROUP BY source_type, source_id;
DROP TABLE resource_refs_by_target;

-- 3. No statistics on what no statement filters or joins on: the resource text (ANALYZE after a
--    load sorted 30,000 sampled texts for a histogram nothing reads) and the target ids; and
--    a smaller sample for the rest of `resources` (9,000 rows instead of 30,000: ANALYZE after a
--    ×10 load 0.53 s -> 0.12 s, and its sample is random page reads on a large table). Its
--    statistics are a few dozen types, ids that are unique and load times: 30 histogram buckets
--    and most-common values describe them.
ALTER TABLE resources ALTER COLUMN resource_type SET STATISTICS 30,
                      ALTER COLUMN id SET STATISTICS 30,
                      ALTER COLUMN version_id SET STATISTICS 30,
                      ALTER COLUMN last_updated SET STATISTICS 30,
                      ALTER COLUMN deleted SET STATISTICS 30,
                      ALTER COLUMN written_xid SET STATISTICS 30;
ALTER TABLE resources ALTER COLUMN resource SET STATISTICS 0;
ALTER TABLE resource_history ALTER COLUMN resource SET STATISTICS 0;
-- The target types keep a small sample: Patient-level planning filters sources by them
-- (`target_types && …`), and without statistics the planner expected 3,915 of 53,803 rows and
-- grouped the 201,160 targets by sorting them.
ALTER TABLE resource_refs ALTER COLUMN target_types SET STATISTICS 30,
                          ALTER COLUMN target_ids SET STATISTICS 0;
