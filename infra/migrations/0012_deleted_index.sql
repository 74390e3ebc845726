-- The deleted resources of each type, kept small (only tombstones are in it).
--
-- Planning a Patient- or Group-level job keeps the references of sources that are current at
-- the transaction time: it finds the few that are not (deleted, through this index, or written
-- since, through resources_type_last_updated) instead of checking every source against
-- `resources` (200,000 random heap accesses for 1,000 patients of the ×10 set, most of the
-- planning statement's time). Loads of resources that are not deleted never touch it.
CREATE INDEX resources_deleted ON resources (resource_type, id) WHERE deleted;
