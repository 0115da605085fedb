-- Usage metering. `usage_records`, `usage_hourly`, `usage_daily` and `usage_sessions` are
-- built by the `usage` projector from AssistantMessageRecorded events; `usage_spend` is kept
-- in the same transaction as those events (an inline projection) so that budgets read the
-- exact spend; `budgets` is built by the `budgets` projector from Budget* events.
CREATE TABLE usage_records (
    tenant_id   TEXT NOT NULL,
    message_id  TEXT COLLATE "C" NOT NULL,
    session_id  TEXT COLLATE "C" NOT NULL,
    agent_id    TEXT COLLATE "C" NOT NULL,
    provider    TEXT COLLATE "C" NOT NULL,
    model       TEXT COLLATE "C" NOT NULL,
    api_key     TEXT COLLATE "C" NOT NULL,
    tokens_in   BIGINT NOT NULL,
    tokens_out  BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    price_micros_per_1k BIGINT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT usage_records_pkey PRIMARY KEY (tenant_id, message_id)
);
CREATE INDEX usage_records_tenant_id_recorded_at_message_id_idx
    ON usage_records (tenant_id, recorded_at, message_id);

-- Totals per tenant, UTC hour (or day), provider, model, agent and key.
CREATE TABLE usage_hourly (
    tenant_id   TEXT NOT NULL,
    bucket      TIMESTAMPTZ NOT NULL,
    provider    TEXT COLLATE "C" NOT NULL,
    model       TEXT COLLATE "C" NOT NULL,
    agent_id    TEXT COLLATE "C" NOT NULL,
    api_key     TEXT COLLATE "C" NOT NULL,
    messages    BIGINT NOT NULL,
    tokens_in   BIGINT NOT NULL,
    tokens_out  BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    CONSTRAINT usage_hourly_pkey PRIMARY KEY (tenant_id, bucket, provider, model, agent_id, api_key)
);

CREATE TABLE usage_daily (
    tenant_id   TEXT NOT NULL,
    bucket      TIMESTAMPTZ NOT NULL,
    provider    TEXT COLLATE "C" NOT NULL,
    model       TEXT COLLATE "C" NOT NULL,
    agent_id    TEXT COLLATE "C" NOT NULL,
    api_key     TEXT COLLATE "C" NOT NULL,
    messages    BIGINT NOT NULL,
    tokens_in   BIGINT NOT NULL,
    tokens_out  BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    CONSTRAINT usage_daily_pkey PRIMARY KEY (tenant_id, bucket, provider, model, agent_id, api_key)
);

-- Which sessions had billed replies in which UTC hour, per group: distinct session counts
-- over any range of hours without reading usage_records.
CREATE TABLE usage_sessions (
    tenant_id  TEXT NOT NULL,
    bucket     TIMESTAMPTZ NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    provider   TEXT COLLATE "C" NOT NULL,
    model      TEXT COLLATE "C" NOT NULL,
    agent_id   TEXT COLLATE "C" NOT NULL,
    api_key    TEXT COLLATE "C" NOT NULL,
    CONSTRAINT usage_sessions_pkey PRIMARY KEY (tenant_id, bucket, session_id, provider, model, agent_id, api_key)
);

-- Spend per tenant (scope `tenant`) and agent (`agent:<id>`) and UTC month (`YYYY-MM`).
CREATE TABLE usage_spend (
    tenant_id    TEXT NOT NULL,
    scope        TEXT COLLATE "C" NOT NULL,
    month        TEXT NOT NULL,
    spent_micros BIGINT NOT NULL,
    CONSTRAINT usage_spend_pkey PRIMARY KEY (tenant_id, scope, month)
);

CREATE TABLE budgets (
    tenant_id            TEXT NOT NULL,
    scope                TEXT COLLATE "C" NOT NULL,
    monthly_limit_micros BIGINT NOT NULL,
    enforcement          TEXT NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    CONSTRAINT budgets_pkey PRIMARY KEY (tenant_id, scope)
);
