-- Which sessions had billed replies on which UTC day, by provider and agent: the distinct
-- session counts of `/v1/usage/rollup` read this narrow table instead of `usage_sessions`.
CREATE TABLE usage_session_days (
    tenant_id  TEXT NOT NULL,
    bucket     TIMESTAMPTZ NOT NULL,
    provider   TEXT COLLATE "C" NOT NULL,
    agent_id   TEXT COLLATE "C" NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    CONSTRAINT usage_session_days_pkey PRIMARY KEY (tenant_id, bucket, provider, agent_id, session_id)
);
