-- Read models of the agent gateway, built from Agent* and Session* events.
-- Index names follow PostgreSQL's default naming, which a projection rebuild relies on.
CREATE TABLE agents (
    tenant_id  TEXT NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    name       TEXT NOT NULL,
    config     JSONB NOT NULL,
    status     TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT agents_pkey PRIMARY KEY (tenant_id, id)
);

CREATE TABLE sessions (
    tenant_id        TEXT NOT NULL,
    id               TEXT COLLATE "C" NOT NULL,
    agent_id         TEXT NOT NULL,
    customer_id      TEXT,
    metadata         JSONB NOT NULL,
    status           TEXT NOT NULL,
    message_count    BIGINT NOT NULL,
    version          BIGINT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    last_activity_at TIMESTAMPTZ NOT NULL,
    closed_at        TIMESTAMPTZ,
    CONSTRAINT sessions_pkey PRIMARY KEY (tenant_id, id)
);
CREATE INDEX sessions_tenant_id_agent_id_id_idx ON sessions (tenant_id, agent_id, id);
CREATE INDEX sessions_tenant_id_customer_id_id_idx ON sessions (tenant_id, customer_id, id);

-- One row per user or assistant message; `sequence` is the event's place in its session.
CREATE TABLE transcript_messages (
    tenant_id  TEXT NOT NULL,
    session_id TEXT NOT NULL,
    sequence   BIGINT NOT NULL,
    id         TEXT NOT NULL,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    reply_to   TEXT,
    provider   TEXT,
    model      TEXT,
    usage      JSONB,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT transcript_messages_pkey PRIMARY KEY (tenant_id, session_id, sequence)
);

-- Every provider call, successful or not.
CREATE TABLE provider_calls (
    tenant_id      TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    sequence       BIGINT NOT NULL,
    message_id     TEXT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT,
    attempt        INTEGER NOT NULL,
    status         TEXT NOT NULL,
    http_status    INTEGER,
    latency_ms     BIGINT NOT NULL,
    error_code     TEXT,
    retry_after_ms BIGINT,
    created_at     TIMESTAMPTZ NOT NULL,
    CONSTRAINT provider_calls_pkey PRIMARY KEY (tenant_id, session_id, sequence)
);
