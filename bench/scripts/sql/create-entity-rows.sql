-- What PostgreSQL must write for :group create-entity requests committed together, in the
-- gateway's own tables, with values of the same sizes as the gateway's: the events, the
-- idempotency records with their stored responses, and the `entities` rows. The gateway also
-- binds every value from the client, reads the events back for the projector, and commits the
-- projection in a transaction of its own; none of that is done here, so this is an upper bound
-- of what any gateway could reach on this database.
BEGIN;
INSERT INTO events (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at)
SELECT gen_random_uuid(), 'bench-t', 'Entity', 'bench-items/' || k, 1, 'EntityCreated', '1.0',
  ('{"id": "' || k || '", "data": {"n": 56682, "name": "item 56682", "tags": ["bench", "load"], "payload": "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"}, "entityType": "bench-items"}')::jsonb,
  ('{"actor": "key_nvz1fxd3e2mc1p4udzn8", "schema": 1, "command": "CreateEntity", "tenantId": "bench-43c06cec", "requestId": "req_01a2331828e972a28b735847bb85828d", "correlationId": "req_01a2331828e972a28b735847bb85828d", "idempotencyKey": "' || k || '"}')::jsonb,
  now()
FROM (SELECT gen_random_uuid()::text AS k FROM generate_series(1, :group)) ks;
INSERT INTO idempotency_records (tenant_id, scope, idempotency_key, request_hash, state, status_code, response_headers, response_body, locked_until, created_at)
SELECT 'bench-t', 'create_entity', gen_random_uuid()::text, '57fd04af385ae4b08b11f74d7b51cbfdbaca2c6aae274dfb9b87dfda58ca8b4a', 'completed', 201,
  '[["etag", "\"1\""], ["x-event-position", "AAAAAAACyyIAAAAAAAAABQ"], ["location", "/v1/bench-items/01a23317-f9d6-7143-9726-adcfbeb23526"], ["content-type", "application/json"]]'::jsonb,
  convert_to('{"entity":"bench-items","id":"01a23317-f9d6-7143-9726-adcfbeb23526","version":1,"data":{"n":4,"name":"item 4","payload":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor","tags":["bench","load"]},"createdAt":"2026-12-01T19:32:19.035839Z","updatedAt":"2026-12-01T19:32:19.035839Z"}', 'UTF8'),
  now(), now()
FROM generate_series(1, :group)
ON CONFLICT DO NOTHING;
INSERT INTO entities (tenant_id, entity_type, id, data, version, created_at, updated_at)
SELECT 'bench-t', 'bench-items', gen_random_uuid()::text, '{"n": 0, "name": "item 0", "tags": ["bench", "load"], "payload": "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"}'::jsonb, 1, now(), now()
FROM generate_series(1, :group);
COMMIT;
