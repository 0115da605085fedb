CREATE TABLE tenants (
    tenant_id             TEXT NOT NULL PRIMARY KEY,
    name                  TEXT NOT NULL,
    status                TEXT NOT NULL,
    rate_limit_per_minute INTEGER,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL
);

CREATE TABLE api_keys (
    key_id      TEXT NOT NULL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    roles       TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    expires_at  TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX api_keys_tenant_id_key_id_idx ON api_keys (tenant_id, key_id);

CREATE TABLE api_key_last_used (
    key_id       TEXT NOT NULL PRIMARY KEY,
    last_used_at TEXT NOT NULL
);

CREATE TABLE idempotency_records (
    tenant_id        TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('in_flight', 'completed')),
    status_code      INTEGER,
    response_headers TEXT,
    response_body    BLOB,
    locked_until     TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX idempotency_records_created_at_idx ON idempotency_records (created_at);
