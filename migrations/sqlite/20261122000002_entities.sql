-- Read model of generic entities, built by the `entities` projector from Entity* events.
CREATE TABLE entities (
    tenant_id   TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    id          TEXT NOT NULL,
    data        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    deleted_at  TEXT,
    PRIMARY KEY (tenant_id, entity_type, id)
);
