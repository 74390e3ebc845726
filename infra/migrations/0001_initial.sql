-- Resources: the current version of each (type, id). `resource` keeps the exact bytes that are
-- exported (compact JSON text, meta.versionId/lastUpdated stamped), so exports copy text without
-- parsing or jsonb conversion.
CREATE TABLE resources (
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    bigint      NOT NULL,
    last_updated  timestamptz NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    resource      text        NOT NULL,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX resources_type_last_updated ON resources (resource_type, last_updated);

-- Prior versions, moved here when a resource is updated or deleted.
CREATE TABLE resource_history (
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    bigint      NOT NULL,
    last_updated  timestamptz NOT NULL,
    deleted       boolean     NOT NULL,
    resource      text        NOT NULL,
    PRIMARY KEY (resource_type, id, version_id)
);

-- Patient-compartment membership of the current version of each resource (R4 CompartmentDefinition).
CREATE TABLE compartment (
    patient_id    text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    PRIMARY KEY (resource_type, resource_id, patient_id)
);
CREATE INDEX compartment_patient ON compartment (patient_id, resource_type);

-- Outgoing references of the current version of each resource (relative `Type/id` only).
CREATE TABLE resource_refs (
    source_type text NOT NULL,
    source_id   text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    PRIMARY KEY (source_type, source_id, target_type, target_id)
);
CREATE INDEX resource_refs_target ON resource_refs (target_type, target_id);

CREATE TABLE export_jobs (
    id               uuid        PRIMARY KEY,
    level            text        NOT NULL CHECK (level IN ('system', 'patient', 'group')),
    group_id         text,
    params           jsonb       NOT NULL,
    request_url      text        NOT NULL,
    client_id        text,
    transaction_time timestamptz NOT NULL,
    status           text        NOT NULL CHECK (status IN ('Queued', 'Active', 'Complete', 'Failed',
                                                           'CancellationRequested', 'Cancelled')),
    planned          boolean     NOT NULL DEFAULT false,
    lease_owner      text,
    lease_expires_at timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    expires_at       timestamptz,
    deleted_at       timestamptz,
    files_purged_at  timestamptz
);
CREATE INDEX export_jobs_claimable ON export_jobs (created_at)
    WHERE status IN ('Queued', 'Active', 'CancellationRequested');

-- The patients of a Patient- or Group-level job, fixed when the job is planned.
CREATE TABLE export_job_patients (
    job_id     uuid NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    patient_id text NOT NULL,
    PRIMARY KEY (job_id, patient_id)
);

-- One work item per resource type of a job. `cursor_id` is the last id that is durably in a
-- finished file; `phase` 0 reads current versions, 1 reads prior versions of resources changed
-- after the job's transaction time.
CREATE TABLE export_work_items (
    job_id        uuid    NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    resource_type text    NOT NULL,
    phase         smallint NOT NULL DEFAULT 0,
    cursor_id     text    NOT NULL DEFAULT '',
    next_file_seq integer NOT NULL DEFAULT 1,
    done          boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, resource_type)
);

-- Finished files. kind: 'output' or 'error'.
CREATE TABLE export_files (
    job_id        uuid    NOT NULL REFERENCES export_jobs (id) ON DELETE CASCADE,
    file_name     text    NOT NULL,
    kind          text    NOT NULL CHECK (kind IN ('output', 'error', 'deleted')),
    resource_type text    NOT NULL,
    object_key    text    NOT NULL,
    resource_count bigint NOT NULL,
    byte_count    bigint  NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, file_name)
);
