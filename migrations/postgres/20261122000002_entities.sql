-- Read model of generic entities, built by the `entities` projector from Entity* events.
-- Index names follow PostgreSQL's default naming (<table>_<columns>_idx, <table>_pkey) so that
-- a projection rebuild, which renames its shadow table's indexes, restores the same names.
CREATE TABLE entities (
    tenant_id   TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    data        JSONB NOT NULL,
    version     BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    deleted_at  TIMESTAMPTZ,
    CONSTRAINT entities_pkey PRIMARY KEY (tenant_id, entity_type, id)
);
