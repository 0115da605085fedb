-- The table of the single-row reference: events-shaped, with a unique stream key.
CREATE TABLE pgbench_events (
    global_position BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    payload JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, aggregate_type, aggregate_id, sequence)
);
