-- Read model of relations: one row per edge, built by the `relations` projector from the
-- Relation* events of each record's `Links` stream. Outgoing edges are read by the primary
-- key, incoming ones by `relations_incoming_idx`; both in id order for keyset pages.
CREATE TABLE relations (
    tenant_id   TEXT NOT NULL,
    source_type TEXT NOT NULL,
    source_id   TEXT COLLATE "C" NOT NULL,
    relation    TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT COLLATE "C" NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT relations_pkey PRIMARY KEY (tenant_id, source_type, source_id, relation, target_id)
);
CREATE INDEX relations_incoming_idx
    ON relations (tenant_id, target_type, target_id, source_type, relation, source_id);
