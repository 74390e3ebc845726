-- Provenance.target references of the current version of each Provenance (relative `Type/id`),
-- with Provenance.recorded: which Provenance belongs to which exported resource
-- (includeAssociatedData), and which one is the latest for a target.
CREATE TABLE provenance_targets (
    provenance_id text NOT NULL,
    target_type   text NOT NULL,
    target_id     text NOT NULL,
    recorded      timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (provenance_id, target_type, target_id)
);
CREATE INDEX provenance_targets_target ON provenance_targets (target_type, target_id, recorded);

-- Provenance already stored.
INSERT INTO provenance_targets (provenance_id, target_type, target_id, recorded)
SELECT DISTINCT r.id, split_part(t.ref, '/', 1), split_part(t.ref, '/', 2),
       CASE WHEN r.resource::jsonb ->> 'recorded' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$'
            THEN (r.resource::jsonb ->> 'recorded')::timestamptz ELSE '-infinity' END
FROM resources r,
     LATERAL (SELECT e ->> 'reference' AS ref FROM jsonb_array_elements(
                  CASE WHEN jsonb_typeof(r.resource::jsonb -> 'target') = 'array'
                       THEN r.resource::jsonb -> 'target' ELSE '[]'::jsonb END) e) t
WHERE r.resource_type = 'Provenance' AND NOT r.deleted
  AND t.ref ~ '^[A-Z][A-Za-z]+/[A-Za-z0-9\-\.]{1,64}$'
ON CONFLICT DO NOTHING;
