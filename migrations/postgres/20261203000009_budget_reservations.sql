-- Reservations of hard budgets: a message to an agent under a hard budget reserves an upper
-- bound of its reply's cost before it is recorded, and the reservation goes when the reply is
-- billed (in the reply's transaction, with usage_spend) or the message fails. Admission counts
-- the spend and the live reservations of the month, so concurrent messages cannot together
-- spend past the limit. A request that dies leaves its reservation until it expires.
CREATE TABLE budget_reservations (
    tenant_id     TEXT NOT NULL,
    scope         TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    month         TEXT NOT NULL,
    micros        BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    CONSTRAINT budget_reservations_pkey PRIMARY KEY (tenant_id, scope, message_id)
);
CREATE INDEX budget_reservations_tenant_id_message_id_idx
    ON budget_reservations (tenant_id, message_id);
