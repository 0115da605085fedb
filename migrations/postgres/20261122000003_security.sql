-- Read model of tenants (projector `tenants`).
CREATE TABLE tenants (
    tenant_id             TEXT COLLATE "C" NOT NULL,
    name                  TEXT NOT NULL,
    status                TEXT NOT NULL,
    rate_limit_per_minute BIGINT,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    CONSTRAINT tenants_pkey PRIMARY KEY (tenant_id)
);

-- Read model of API keys (projector `api_keys`). Looked up by key id on every request.
CREATE TABLE api_keys (
    key_id      TEXT COLLATE "C" NOT NULL,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    roles       TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    expires_at  TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ,
    CONSTRAINT api_keys_pkey PRIMARY KEY (key_id)
);
CREATE INDEX api_keys_tenant_id_key_id_idx ON api_keys (tenant_id, key_id);

-- When each key was last used. Written in the background, not through events (a use is not a
-- business fact), and not owned by a projector, so rebuilds keep it.
CREATE TABLE api_key_last_used (
    key_id       TEXT PRIMARY KEY,
    last_used_at TIMESTAMPTZ NOT NULL
);

-- Idempotency records: the response of the first request with a key, stored in the same
-- transaction as the events that request produced.
CREATE TABLE idempotency_records (
    tenant_id       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('in_flight', 'completed')),
    status_code     INTEGER,
    response_headers JSONB,
    response_body   BYTEA,
    locked_until    TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    CONSTRAINT idempotency_records_pkey PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX idempotency_records_created_at_idx ON idempotency_records (created_at);
