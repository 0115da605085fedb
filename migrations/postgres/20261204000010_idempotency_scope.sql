-- Idempotency keys are scoped by tenant and operation (an HTTP route's operation id), as
-- seed 004's unique (tenantId, scope, idempotencyKey) says: the same key used on two
-- operations names two independent requests. Records stored before have the empty scope;
-- they keep answering for their key until they expire (see eventlog::idempotency).
ALTER TABLE idempotency_records ADD COLUMN scope TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_records ALTER COLUMN scope DROP DEFAULT;
ALTER TABLE idempotency_records DROP CONSTRAINT idempotency_records_pkey;
ALTER TABLE idempotency_records
    ADD CONSTRAINT idempotency_records_pkey PRIMARY KEY (tenant_id, scope, idempotency_key);
