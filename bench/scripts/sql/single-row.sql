INSERT INTO pgbench_events (tenant_id, aggregate_type, aggregate_id, sequence, event_type, payload)
VALUES ('bench', 'Entity', 'items/' || md5(random()::text || clock_timestamp()::text), 1, 'EntityCreated',
  '{"entityType": "items", "id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "data": {"name": "a benchmark item", "category": "c07", "price": 4200, "status": "active", "attributes": {"color": "red", "weight": 12, "tags": ["one", "two", "three"]}}}');
