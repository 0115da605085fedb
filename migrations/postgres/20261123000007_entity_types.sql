-- Read model of tenant-defined entity types, built by the `entity_types` projector. The same
-- projector creates the expression indexes of indexed fields on `entities`.
CREATE TABLE entity_types (
    tenant_id   TEXT NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    schema      JSONB NOT NULL,
    version     BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT entity_types_pkey PRIMARY KEY (tenant_id, name)
);
