-- The event log: the single source of truth. Rows are never updated or deleted.
-- Columns keep postgres-es's names (aggregate_type, aggregate_id, sequence, event_type,
-- event_version, payload, metadata) and add what the gateway's guarantees need.
CREATE TABLE events (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY,
    -- The writing transaction. Readers order by (transaction_id, global_position) and read
    -- only below pg_snapshot_xmin(pg_current_snapshot()), so they never skip an event that a
    -- slower transaction commits later.
    transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id        UUID NOT NULL,
    tenant_id       TEXT NOT NULL,
    aggregate_type  TEXT NOT NULL,
    aggregate_id    TEXT NOT NULL,
    sequence        BIGINT NOT NULL CHECK (sequence > 0),
    event_type      TEXT NOT NULL,
    event_version   TEXT NOT NULL,
    payload         JSONB NOT NULL,
    metadata        JSONB NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (tenant_id, aggregate_type, aggregate_id, sequence),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_global_position_key UNIQUE (global_position)
);

CREATE INDEX events_transaction_id_global_position_idx
    ON events (transaction_id, global_position);

-- One row per projector (and per relay later): how far it has read the log.
CREATE TABLE projector_checkpoints (
    name            TEXT PRIMARY KEY,
    transaction_id  BIGINT NOT NULL DEFAULT 0,
    global_position BIGINT NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
