//! `gateway seed demo`: a demo tenant with keys, agents, sessions, a few messages, budgets
//! and customer records, made
//! through the real HTTP API of an in-process gateway, so every record is a command, every
//! reply went through the provider path, and every read model is built by the projectors.

use std::sync::Arc;

use anyhow::{Context, bail};
use domain::api_key::ApiKeyServices;
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use domain::roles::Role;
use serde_json::{Value, json};

use crate::startup::Application;
use app::SystemClock;
use app::bootstrap;
use app::settings::Settings;

/// What the demo creates: two agents with opposite primaries, two sessions each, two
/// messages per session.
const AGENTS: &[(&str, &str, &str, &str)] = &[
    (
        "Customer Support Agent",
        "vendorA",
        "vendorB",
        "You are a patient support agent for Acme's billing questions.",
    ),
    (
        "Sales Assistant",
        "vendorB",
        "vendorA",
        "You help prospects choose the right plan.",
    ),
];
/// The demo's customers: id, name, country, plan.
const CUSTOMERS: &[(&str, &str, &str, &str)] = &[
    ("customer_001", "Ada Lovelace", "GB", "pro"),
    ("customer_002", "Grace Hopper", "US", "enterprise"),
    ("customer_003", "Konrad Zuse", "DE", "free"),
];
const MESSAGES: &[&str] = &[
    "Hello, how can you help me?",
    "Can you tell me about my last invoice?",
];

/// Seeds tenant `tenant` and writes a JSON summary with its API keys to the returned value.
pub async fn demo(settings: Settings, tenant: &str, name: &str) -> anyhow::Result<Value> {
    let log = app::open_log(&settings).await?;
    let clock: ApiKeyServices = Arc::new(SystemClock);
    let id = TenantId::parse(tenant)?;
    let stream = eventlog::StreamId::new(
        id.clone(),
        <domain::tenant::Tenant as cqrs_es::Aggregate>::TYPE,
        id.as_str(),
    );
    if log.version(&stream).await? > 0 {
        bail!("tenant '{tenant}' exists already; seed another with --tenant");
    }
    let metadata = EventMetadata::new(id.clone(), "seed", "seed", "CreateTenant");
    let created = bootstrap::create_tenant(
        &log,
        &clock,
        id.clone(),
        name.to_string(),
        None,
        &metadata,
        None,
        |_, _| eventlog::idempotency::StoredResponse {
            status: 201,
            headers: Vec::new(),
            body: Vec::new(),
        },
    )
    .await?;
    let mut keys = vec![json!({
        "id": created.key.id, "roles": ["admin"], "key": created.key.token,
    })];
    let mut until = created.appended.last_cursor().unwrap_or_default();
    for (key_name, roles) in [
        ("demo-writer", vec![Role::Writer]),
        // An analyst of the console: usage and budgets, and the conversations and records
        // behind them.
        ("demo-analyst", vec![Role::Analyst, Role::Reader]),
    ] {
        let metadata = EventMetadata::new(id.clone(), "seed", "seed", "IssueApiKey");
        let (key, outcome) = bootstrap::issue_key(
            &log,
            &clock,
            &id,
            key_name.into(),
            roles.clone(),
            None,
            &metadata,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        until = outcome.cursor.unwrap_or(until);
        keys.push(json!({ "id": key.id, "roles": roles, "key": key.token }));
    }
    bootstrap::catch_up(&log, &projections::all(), until).await?;
    log.db().close().await;

    // The rest goes through HTTP, to an in-process gateway on a free local port.
    let mut local = settings;
    local.host = "127.0.0.1".into();
    local.port = 0;
    let mut app = Application::build(local).await?;
    let platform_key = app.take_bootstrap_key();
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let result = populate(&base, created.key.token.as_str()).await;
    shutdown.cancel();
    server.await.context("the in-process gateway")??;
    let (agents, sessions, messages) = result?;

    let mut summary = json!({
        "tenant": { "id": tenant, "name": name },
        "apiKeys": keys,
        "agents": agents,
        "sessions": sessions,
        "messages": messages,
        "try": [
            format!("curl -H 'X-API-Key: {}' http://localhost:8080/v1/agents", created.key.token),
            format!(
                "curl -H 'X-API-Key: {}' 'http://localhost:8080/v1/usage/rollup?from={}&to={}'",
                keys[2]["key"].as_str().unwrap_or_default(),
                chrono::Utc::now().format("%Y-%m-01"),
                chrono::Utc::now().format("%Y-%m-%d"),
            ),
        ],
        "note": "API keys are shown once; only their hashes are stored",
    });
    if let Some(key) = platform_key {
        summary["platformAdminKey"] = json!(key);
    }
    Ok(summary)
}

async fn populate(base: &str, key: &str) -> anyhow::Result<(Vec<Value>, Vec<Value>, usize)> {
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Value, idempotency: Option<String>| {
        let mut request = client
            .request(method.clone(), format!("{base}{path}"))
            .header("x-api-key", key)
            .json(&body);
        if let Some(idempotency) = idempotency {
            request = request.header("idempotency-key", idempotency);
        }
        async move {
            let response = request.send().await?;
            let status = response.status();
            let body: Value = response.json().await?;
            if !status.is_success() {
                bail!("{method} {path} answered {status}: {body}");
            }
            Ok::<_, anyhow::Error>(body)
        }
    };
    let post = |path: String, body: Value, idempotency: Option<String>| {
        call(reqwest::Method::POST, path, body, idempotency)
    };
    let (mut agents, mut sessions, mut messages) = (Vec::new(), Vec::new(), 0);
    for (name, primary, fallback, prompt) in AGENTS {
        let agent = post(
            "/v1/agents".into(),
            json!({
                "name": name,
                "primaryProvider": primary,
                "fallbackProvider": fallback,
                "systemPrompt": prompt,
                "temperature": 0.7,
                "maxTokens": 512,
            }),
            None,
        )
        .await?;
        let agent_id = agent["agent"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        agents.push(json!({ "id": agent_id, "name": name }));
        for customer in ["customer_001", "customer_002"] {
            let session = post(
                "/v1/sessions".into(),
                json!({ "agentId": agent_id, "customerId": customer, "metadata": { "channel": "chat" } }),
                None,
            )
            .await?;
            let session_id = session["session"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            for (index, content) in MESSAGES.iter().enumerate() {
                post(
                    format!("/v1/sessions/{session_id}/messages"),
                    json!({ "role": "user", "content": content }),
                    Some(format!("seed-{session_id}-{index}")),
                )
                .await?;
                messages += 1;
            }
            sessions.push(json!({ "id": session_id, "agentId": agent_id, "customerId": customer }));
        }
    }
    // Budgets (soft, so they never refuse a message): the tenant's, with room left, and the
    // first agent's, already spent.
    call(
        reqwest::Method::PUT,
        "/v1/budgets/tenant".into(),
        json!({"monthlyLimitUsd": 5, "enforcement": "soft"}),
        None,
    )
    .await?;
    let first = agents[0]["id"].as_str().unwrap_or_default().to_string();
    call(
        reqwest::Method::PUT,
        format!("/v1/budgets/agents/{first}"),
        json!({"monthlyLimitUsd": 0.000001, "enforcement": "soft"}),
        None,
    )
    .await?;
    // The customers of the sessions, as records of a type of their own.
    post(
        "/v1/entity-types".into(),
        json!({"name": "customers", "key": ["customerId"], "fields": {
            "customerId": {"type": "string", "required": true},
            "name": {"type": "string", "required": true},
            "country": {"type": "string", "indexed": true},
            "plan": {"type": "string", "enum": ["free", "pro", "enterprise"]}}}),
        None,
    )
    .await?;
    for (id, name, country, plan) in CUSTOMERS {
        post(
            "/v1/customers".into(),
            json!({"customerId": id, "name": name, "country": country, "plan": plan}),
            None,
        )
        .await?;
    }
    Ok((agents, sessions, messages))
}
