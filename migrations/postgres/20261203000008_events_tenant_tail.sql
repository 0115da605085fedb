-- no-transaction
-- A tenant's tail of the log (its change feed and live stream) reads by tenant, in log order:
-- without an index that leads with the tenant, an idle stream scanned every other tenant's
-- events after its cursor on each append. Built concurrently: an existing log stays writable.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_tenant_id_transaction_id_global_position_idx
    ON events (tenant_id, transaction_id, global_position);
