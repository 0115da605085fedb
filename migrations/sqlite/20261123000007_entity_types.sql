-- Read model of tenant-defined entity types, built by the `entity_types` projector. The same
-- projector creates the expression indexes of indexed fields on `entities`.
CREATE TABLE entity_types (
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    schema      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
