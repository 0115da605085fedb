-- What PostgreSQL must write for :group messages (each in its own session of the :sessions
-- seeded ones), in the gateway's own tables, with values of the same sizes: the commit that
-- records the user messages and claims their keys; the commit that records the provider calls
-- and the replies, completes the keys with their responses and adds to the month's spend; and
-- the projection: transcripts, provider calls, usage records and rollups, session counters.
-- Values are made in the database, nothing is read back, and the per-hour session activity is
-- left out, so this is an upper bound of what any gateway could reach on this database.
\set base random(1, 1000000000)
\set s random(1, :sessions - :group)
BEGIN;
INSERT INTO events (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at)
SELECT gen_random_uuid(), 'bench-t', 'Session', 's' || (:s + g) || '-' || :base, 1, 'UserMessageRecorded', '1.0',
  ('{"messageId": "msg_' || md5(g::text || :base) || '", "content": "Hello there, how are you doing today?", "recordedAt": "2026-12-01T19:32:19.035839Z"}')::jsonb,
  '{"actor": "key_nvz1fxd3e2mc1p4udzn8", "schema": 1, "command": "SendMessage", "tenantId": "bench-43c06cec", "requestId": "req_01a2331828e972a28b735847bb85828d", "correlationId": "req_01a2331828e972a28b735847bb85828d", "idempotencyKey": "0ed6e40b-f11b-4bf9-9fcc-478f52b09668"}'::jsonb,
  now()
FROM generate_series(1, :group) g;
INSERT INTO idempotency_records (tenant_id, scope, idempotency_key, request_hash, state, locked_until, created_at)
SELECT 'bench-t', 'send_message', 'k' || :client_id || '-' || :base || '-' || g, '57fd04af385ae4b08b11f74d7b51cbfdbaca2c6aae274dfb9b87dfda58ca8b4a', 'in_flight', now() + interval '1 minute', now()
FROM generate_series(1, :group) g
ON CONFLICT DO NOTHING;
COMMIT;
BEGIN;
INSERT INTO events (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at)
SELECT gen_random_uuid(), 'bench-t', 'Session', 's' || (:s + g) || '-' || :base, 1 + e, CASE e WHEN 1 THEN 'ProviderCallAttempted' ELSE 'AssistantMessageRecorded' END, '1.0',
  (CASE e WHEN 1 THEN '{"attempt": 1, "provider": "vendorA", "model": "model-a1", "status": "succeeded", "httpStatus": 200, "latencyMs": 0, "messageId": "msg_0193a1b2c3d47e5f8a9b0c1d2e3f4a5b", "recordedAt": "2026-12-01T19:32:19.035839Z", "errorCode": null, "retryAfterMs": null}'
   ELSE '{"messageId": "msg_0193a1b2c3d47e5f8a9b0c1d2e3f4a5b", "replyTo": "msg_0193a1b2c3d47e5f8a9b0c1d2e3f4a5c", "content": "This is the simulated reply of vendorA to your message, word for word, with a little more text.", "provider": "vendorA", "model": "model-a1", "usage": {"tokensIn": 12, "tokensOut": 34, "costMicros": 920, "priceMicrosPer1k": {"in": 10000, "out": 20000}}, "apiKey": "key_nvz1fxd3e2mc1p4udzn8", "agentId": "agt_0193a1b2c3d47e5f8a9b0c1d2e3f4a5b", "recordedAt": "2026-12-01T19:32:19.035839Z", "latencyMs": 0, "attempts": 1, "fallbackUsed": false, "extra": "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}' END)::jsonb,
  '{"actor": "key_nvz1fxd3e2mc1p4udzn8", "schema": 1, "command": "RecordReply", "tenantId": "bench-43c06cec", "requestId": "req_01a2331828e972a28b735847bb85828d", "correlationId": "req_01a2331828e972a28b735847bb85828d", "idempotencyKey": "0ed6e40b-f11b-4bf9-9fcc-478f52b09668"}'::jsonb,
  now()
FROM generate_series(1, :group) g, generate_series(1, 2) e;
UPDATE idempotency_records SET state = 'completed', status_code = 201,
  response_headers = '[["x-event-position", "AAAAAAACyyIAAAAAAAAABQ"], ["content-type", "application/json"]]'::jsonb,
  response_body = convert_to(repeat('{"reply": "This is the simulated reply of vendorA to your message, word for word."}', 12), 'UTF8')
WHERE tenant_id = 'bench-t' AND scope = 'send_message' AND idempotency_key IN (SELECT 'k' || :client_id || '-' || :base || '-' || g FROM generate_series(1, :group) g);
INSERT INTO usage_spend AS s (tenant_id, scope, month, spent_micros) VALUES ('bench-t', 'tenant', '2026-12', 920 * :group), ('bench-t', 'agent:agt_1', '2026-12', 920 * :group)
ON CONFLICT (tenant_id, scope, month) DO UPDATE SET spent_micros = s.spent_micros + excluded.spent_micros;
COMMIT;
BEGIN;
INSERT INTO transcript_messages (tenant_id, session_id, sequence, id, role, content, reply_to, provider, model, usage, created_at)
SELECT 'bench-t', 's' || (:s + g) || '-' || :base, e, 'msg_' || md5(g::text || e || :base), CASE e WHEN 1 THEN 'user' ELSE 'assistant' END,
  CASE e WHEN 1 THEN 'Hello there, how are you doing today?' ELSE 'This is the simulated reply of vendorA to your message, word for word, with more text.' END,
  CASE e WHEN 1 THEN NULL ELSE 'msg_0193a1b2c3d47e5f8a9b0c1d2e3f4a5c' END, CASE e WHEN 1 THEN NULL ELSE 'vendorA' END, CASE e WHEN 1 THEN NULL ELSE 'model-a1' END,
  CASE e WHEN 1 THEN NULL ELSE '{"tokensIn": 12, "tokensOut": 34, "costMicros": 920, "priceMicrosPer1k": {"in": 10000, "out": 20000}, "latencyMs": 0}'::jsonb END, now()
FROM generate_series(1, :group) g, generate_series(1, 2) e;
INSERT INTO provider_calls (tenant_id, session_id, sequence, message_id, provider, model, attempt, status, http_status, latency_ms, created_at)
SELECT 'bench-t', 's' || (:s + g) || '-' || :base, 2, 'msg_' || md5(g::text || :base), 'vendorA', 'model-a1', 1, 'succeeded', 200, 0, now()
FROM generate_series(1, :group) g;
INSERT INTO usage_records (tenant_id, message_id, session_id, agent_id, provider, model, api_key, tokens_in, tokens_out, cost_micros, price_micros_per_1k, recorded_at)
SELECT 'bench-t', 'msg_' || md5(g::text || 'r' || :base), 's' || (:s + g) || '-' || :base, 'agt_1', 'vendorA', 'model-a1', 'key_1', 12, 34, 920, 10000, now()
FROM generate_series(1, :group) g;
INSERT INTO usage_hourly AS t (tenant_id, bucket, provider, model, agent_id, api_key, messages, tokens_in, tokens_out, cost_micros)
VALUES ('bench-t', date_trunc('hour', now()), 'vendorA', 'model-a1', 'agt_1', 'key_1', :group, 12 * :group, 34 * :group, 920 * :group)
ON CONFLICT (tenant_id, bucket, provider, model, agent_id, api_key) DO UPDATE SET messages = t.messages + excluded.messages,
  tokens_in = t.tokens_in + excluded.tokens_in, tokens_out = t.tokens_out + excluded.tokens_out, cost_micros = t.cost_micros + excluded.cost_micros;
INSERT INTO usage_daily AS t (tenant_id, bucket, provider, model, agent_id, api_key, messages, tokens_in, tokens_out, cost_micros)
VALUES ('bench-t', date_trunc('day', now()), 'vendorA', 'model-a1', 'agt_1', 'key_1', :group, 12 * :group, 34 * :group, 920 * :group)
ON CONFLICT (tenant_id, bucket, provider, model, agent_id, api_key) DO UPDATE SET messages = t.messages + excluded.messages,
  tokens_in = t.tokens_in + excluded.tokens_in, tokens_out = t.tokens_out + excluded.tokens_out, cost_micros = t.cost_micros + excluded.cost_micros;
UPDATE sessions SET message_count = message_count + 2, version = version + 3, last_activity_at = now()
WHERE tenant_id = 'bench-t' AND id IN (SELECT 's' || (:s + g) FROM generate_series(1, :group) g);
COMMIT;
