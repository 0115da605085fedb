-- Idempotency keys are scoped by tenant and operation (an HTTP route's operation id), as
-- seed 004's unique (tenantId, scope, idempotencyKey) says: the same key used on two
-- operations names two independent requests. Records stored before have the empty scope;
-- they keep answering for their key until they expire (see eventlog::idempotency).
-- SQLite cannot change a primary key: the table is rebuilt.
CREATE TABLE idempotency_records_scoped (
    tenant_id        TEXT NOT NULL,
    scope            TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('in_flight', 'completed')),
    status_code      INTEGER,
    response_headers TEXT,
    response_body    BLOB,
    locked_until     TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (tenant_id, scope, idempotency_key)
);
INSERT INTO idempotency_records_scoped
    (tenant_id, scope, idempotency_key, request_hash, state, status_code, response_headers,
     response_body, locked_until, created_at)
SELECT tenant_id, '', idempotency_key, request_hash, state, status_code, response_headers,
       response_body, locked_until, created_at
FROM idempotency_records;
DROP TABLE idempotency_records;
ALTER TABLE idempotency_records_scoped RENAME TO idempotency_records;
CREATE INDEX idempotency_records_created_at_idx ON idempotency_records (created_at);
