//! The agent gateway (seed 004), black-box over HTTP: agents, sessions, messages with retry
//! and fallback, streaming, transcripts, and recovery after a crash.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::providers::simulated::Simulation;
use app::providers::{ProviderKind, ProviderSettings, Usd};
use app::settings::Settings;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    Backend, Process, TestApp, TestDb, create_agent, create_session, create_tenant, error_code,
    eventually, json_of, not_found, quick, send, spawn_app_on, spawn_app_with,
};

fn simulate(settings: &mut Settings, provider: &str, simulation: Simulation) {
    settings
        .providers
        .get_mut(provider)
        .expect("a configured provider")
        .simulation = simulation;
}

async fn app_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(backend, |settings| {
        quick(settings);
        adjust(settings);
    })
    .await
}

fn support_agent() -> Value {
    json!({
        "name": "Customer Support Agent",
        "description": "Answers billing questions",
        "primaryProvider": "vendorA",
        "fallbackProvider": "vendorB",
        "systemPrompt": "You are helpful.",
        "temperature": 0.3,
        "maxTokens": 256,
    })
}

/// The transcript once it holds `messages` messages.
async fn transcript(app: &TestApp, tenant: &str, session: &str, messages: usize) -> Value {
    eventually(Duration::from_secs(10), || async {
        let body = json_of(
            app.request(
                Method::GET,
                &format!("/v1/sessions/{session}/transcript"),
                tenant,
            )
            .send()
            .await
            .ok()?,
        )
        .await;
        (body["messages"].as_array()?.len() == messages).then_some(body)
    })
    .await
}

/// The provider-call log once it holds `calls` calls.
async fn provider_calls(app: &TestApp, tenant: &str, session: &str, calls: usize) -> Vec<Value> {
    eventually(Duration::from_secs(10), || async {
        let body = json_of(
            app.request(
                Method::GET,
                &format!("/v1/sessions/{session}/provider-calls"),
                tenant,
            )
            .send()
            .await
            .ok()?,
        )
        .await;
        let list = body["calls"].as_array()?.clone();
        (list.len() == calls).then_some(list)
    })
    .await
}

async fn the_seed_004_flow_works_end_to_end(backend: Backend) {
    let app = app_with(backend, |_| {}).await;

    // /v1/me shows the prices.
    let me = json_of(
        app.request(Method::GET, "/v1/me", "acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(me["pricing"]["vendorA"]["usdPer1kTokens"], 0.002);
    assert_eq!(me["pricing"]["vendorB"]["usdPer1kTokens"], 0.003);

    // Agents: create, read, list, replace, patch.
    let agent = create_agent(&app, "acme", json!({ "agent": support_agent() })).await;
    assert!(agent.starts_with("agt_"));
    let read = eventually(Duration::from_secs(10), || async {
        let response = app
            .request(Method::GET, &format!("/v1/agents/{agent}"), "acme")
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    let read = json_of(read).await;
    assert_eq!(read["agent"]["name"], "Customer Support Agent");
    assert_eq!(read["agent"]["primaryProvider"], "vendorA");
    assert_eq!(read["agent"]["fallbackProvider"], "vendorB");
    assert_eq!(read["agent"]["status"], "active");

    let mut replacement = support_agent();
    replacement["name"] = json!("Support v2");
    let put = app
        .request(Method::PUT, &format!("/v1/agents/{agent}"), "acme")
        .header("if-match", "\"1\"")
        .json(&replacement)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(json_of(put).await["agent"]["version"], 2);
    let patched = app
        .request(Method::PATCH, &format!("/v1/agents/{agent}"), "acme")
        .json(&json!({"temperature": null, "model": "fast-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched = json_of(patched).await;
    assert_eq!(patched["agent"]["name"], "Support v2");
    assert_eq!(patched["agent"]["model"], "fast-1");
    assert!(patched["agent"].get("temperature").is_none());
    let stale = app
        .request(Method::PUT, &format!("/v1/agents/{agent}"), "acme")
        .header("if-match", "\"1\"")
        .json(&support_agent())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(stale).await, (409, "VERSION_CONFLICT".into()));

    let listed = eventually(Duration::from_secs(10), || async {
        let body = json_of(
            app.request(Method::GET, "/v1/agents", "acme")
                .send()
                .await
                .ok()?,
        )
        .await;
        (body["agents"][0]["version"] == 3).then_some(body)
    })
    .await;
    assert_eq!(listed["agents"].as_array().unwrap().len(), 1);

    // A session and a message.
    let session = create_session(&app, "acme", &agent).await;
    assert!(session.starts_with("ses_"));
    let first = send(
        &app,
        "acme",
        &session,
        "unique-key-123",
        "Hello, how can you help me?",
    )
    .await;
    assert_eq!(first.status(), 201);
    let first = json_of(first).await;
    let message = &first["message"];
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["sessionId"], session);
    assert_eq!(message["role"], "assistant");
    assert!(
        message["content"]
            .as_str()
            .unwrap()
            .contains("Hello, how can you help me?")
    );
    let metadata = &first["metadata"];
    assert_eq!(metadata["agentId"], agent);
    assert_eq!(metadata["providerUsed"], "vendorA");
    assert_eq!(metadata["primaryAttempted"], "vendorA");
    assert_eq!(metadata["fallbackAttempted"], Value::Null);
    assert_eq!(metadata["fallbackUsed"], false);
    assert_eq!(metadata["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(metadata["attempts"][0]["provider"], "vendorA");
    assert_eq!(metadata["attempts"][0]["status"], "success");
    assert_eq!(metadata["attempts"][0]["httpStatus"], 200);
    assert_eq!(metadata["attempts"][0]["retries"], 0);
    assert_eq!(metadata["attempts"][0]["errorCode"], Value::Null);
    let usage = &metadata["usage"];
    let tokens = usage["tokensIn"].as_u64().unwrap() + usage["tokensOut"].as_u64().unwrap();
    // (tokensIn + tokensOut) / 1000 × $0.002, in whole micro-dollars, rounded half up.
    assert_eq!(
        usage["costMicros"].as_u64().unwrap(),
        (tokens * 2000 + 500) / 1000
    );
    assert_eq!(usage["pricing"]["usdPer1kTokens"], 0.002);
    assert_eq!(metadata["idempotency"]["key"], "unique-key-123");
    assert_eq!(metadata["idempotency"]["replayed"], false);
    assert!(metadata["requestId"].as_str().unwrap().starts_with("req_"));

    // The replay: 200, replayed, the same message, and no second usage.
    let replay = send(
        &app,
        "acme",
        &session,
        "unique-key-123",
        "Hello, how can you help me?",
    )
    .await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    let replay = json_of(replay).await;
    assert_eq!(replay["metadata"]["idempotency"]["replayed"], true);
    assert_eq!(replay["message"], first["message"]);
    assert_eq!(replay["metadata"]["usage"], first["metadata"]["usage"]);
    let reused = send(&app, "acme", &session, "unique-key-123", "Something else").await;
    assert_eq!(
        error_code(reused).await,
        (422, "IDEMPOTENCY_KEY_REUSED".into())
    );

    // A second message sees the first exchange as context.
    let second = send(&app, "acme", &session, "unique-key-456", "And my invoice?").await;
    assert_eq!(second.status(), 201);

    let shown = transcript(&app, "acme", &session, 4).await;
    let messages = shown["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(messages[0]["content"], "Hello, how can you help me?");
    assert_eq!(messages[1]["id"], first["message"]["id"]);
    assert_eq!(messages[1]["content"], first["message"]["content"]);
    assert_eq!(messages[1]["provider"], "vendorA");
    assert_eq!(messages[1]["usage"], first["metadata"]["usage"]);
    assert!(messages[0].get("usage").is_none());
    let read = eventually(Duration::from_secs(10), || async {
        let body = json_of(
            app.request(Method::GET, &format!("/v1/sessions/{session}"), "acme")
                .send()
                .await
                .ok()?,
        )
        .await;
        (body["session"]["messageCount"] == 4).then_some(body)
    })
    .await;
    assert_eq!(read["session"]["status"], "active");
    assert_eq!(read["session"]["customerId"], "customer_123");

    // Sessions list with filters.
    let sessions = json_of(
        app.request(
            Method::GET,
            &format!("/v1/sessions?agentId={agent}&customerId=customer_123&status=active"),
            "acme",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(sessions["sessions"][0]["metadata"]["channel"], "chat");
    let none = json_of(
        app.request(Method::GET, "/v1/sessions?status=closed", "acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(none["sessions"], json!([]));
    let bad = app
        .request(Method::GET, "/v1/sessions?status=open", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad).await, (400, "INVALID_PARAMETER".into()));
}
both_backends!(
    the_seed_004_flow_works_end_to_end,
    the_seed_004_flow_works_end_to_end
);

async fn refusals_have_stable_codes(backend: Backend) {
    let app = app_with(backend, |_| {}).await;
    let agent = create_agent(&app, "acme", support_agent()).await;
    let session = create_session(&app, "acme", &agent).await;

    // No Idempotency-Key.
    let keyless = app
        .request(
            Method::POST,
            &format!("/v1/sessions/{session}/messages"),
            "acme",
        )
        .json(&json!({"content": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(keyless).await,
        (400, "IDEMPOTENCY_KEY_REQUIRED".into())
    );

    // Invalid agents, field by field.
    let invalid = app
        .request(Method::POST, "/v1/agents", "acme")
        .json(&json!({"name": "", "primaryProvider": "vendorZ", "temperature": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let body = json_of(invalid).await;
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    let fields: Vec<&str> = body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "primaryProvider", "temperature"]);
    let unknown_field = app
        .request(Method::POST, "/v1/agents", "acme")
        .json(&json!({"name": "x", "primaryProvider": "vendorA", "colour": "red"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(unknown_field).await,
        (400, "VALIDATION_ERROR".into())
    );
    let empty = send(&app, "acme", &session, "k-empty", "   ").await;
    assert_eq!(error_code(empty).await, (400, "VALIDATION_ERROR".into()));

    // Unknown agent and session.
    let no_agent = app
        .request(Method::POST, "/v1/sessions", "acme")
        .json(&json!({"agentId": "agt_missing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(no_agent).await, "agent");
    let no_session = send(&app, "acme", "ses_missing", "k-1", "Hi").await;
    assert_eq!(not_found(no_session).await, "session");

    // Another tenant's session and agent: 404, and nothing is written to them.
    let foreign = send(&app, "globex", &session, "k-2", "Hi").await;
    assert_eq!(not_found(foreign).await, "session");
    let foreign_read = app
        .request(
            Method::GET,
            &format!("/v1/sessions/{session}/transcript"),
            "globex",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(foreign_read).await, "session");
    let foreign_agent = app
        .request(Method::GET, &format!("/v1/agents/{agent}"), "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(foreign_agent).await, "agent");
    let foreign_session = app
        .request(Method::POST, "/v1/sessions", "globex")
        .json(&json!({"agentId": agent}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(foreign_session).await, "agent");

    // A closed session takes no message; the refusal is replayed for the same key.
    let closed = app
        .request(
            Method::POST,
            &format!("/v1/sessions/{session}/close"),
            "acme",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 200);
    assert_eq!(json_of(closed).await["session"]["status"], "closed");
    let late = send(&app, "acme", &session, "k-late", "Anyone?").await;
    assert_eq!(error_code(late).await, (409, "SESSION_CLOSED".into()));
    let late_again = send(&app, "acme", &session, "k-late", "Anyone?").await;
    assert_eq!(late_again.headers()["x-idempotent-replay"], "true");
    assert_eq!(error_code(late_again).await, (409, "SESSION_CLOSED".into()));

    // An archived agent takes no session or message, and no change.
    let live = create_session(&app, "acme", &agent).await;
    let archived = app
        .request(Method::DELETE, &format!("/v1/agents/{agent}"), "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(archived.status(), 200);
    assert_eq!(json_of(archived).await["agent"]["status"], "archived");
    let new_session = app
        .request(Method::POST, "/v1/sessions", "acme")
        .json(&json!({"agentId": agent}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(new_session).await,
        (409, "AGENT_ARCHIVED".into())
    );
    let to_archived = send(&app, "acme", &live, "k-arch", "Hello?").await;
    assert_eq!(
        error_code(to_archived).await,
        (409, "AGENT_ARCHIVED".into())
    );
    let change = app
        .request(Method::PATCH, &format!("/v1/agents/{agent}"), "acme")
        .json(&json!({"name": "Revived"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(change).await, (409, "AGENT_ARCHIVED".into()));

    // A reader may read but not send.
    let reader = app
        .request(Method::POST, "/v1/api-keys", "acme")
        .json(&json!({"name": "analyst", "roles": ["reader"]}))
        .send()
        .await
        .unwrap();
    let reader_key = json_of(reader).await["apiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let forbidden = eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(
                Method::POST,
                &format!("/v1/sessions/{live}/messages"),
                &reader_key,
            )
            .header("idempotency-key", "k-reader")
            .json(&json!({"content": "Hi"}))
            .send()
            .await
            .ok()?;
        (response.status() != 401).then_some(response)
    })
    .await;
    assert_eq!(error_code(forbidden).await, (403, "FORBIDDEN".into()));
}
both_backends!(refusals_have_stable_codes, refusals_have_stable_codes);

async fn a_failing_primary_is_retried_then_replaced_by_the_fallback(backend: Backend) {
    let app = app_with(backend, |settings| {
        simulate(
            settings,
            "vendorA",
            Simulation {
                error_rate: 1.0,
                ..Simulation::default()
            },
        );
    })
    .await;
    let agent = create_agent(&app, "acme", support_agent()).await;
    let session = create_session(&app, "acme", &agent).await;

    let response = send(&app, "acme", &session, "k-fallback", "Hello").await;
    assert_eq!(response.status(), 201);
    let body = json_of(response).await;
    let metadata = &body["metadata"];
    assert_eq!(metadata["providerUsed"], "vendorB");
    assert_eq!(metadata["fallbackAttempted"], "vendorB");
    assert_eq!(metadata["fallbackUsed"], true);
    let attempts = metadata["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["provider"], "vendorA");
    assert_eq!(attempts[0]["status"], "error");
    assert_eq!(
        attempts[0]["retries"], 2,
        "two retries after the first call"
    );
    assert_eq!(attempts[0]["httpStatus"], 503);
    assert_eq!(attempts[0]["errorCode"], "PROVIDER_ERROR");
    assert_eq!(attempts[1]["provider"], "vendorB");
    assert_eq!(attempts[1]["status"], "success");
    // Billed at the provider that answered, and only once.
    assert_eq!(metadata["usage"]["pricing"]["usdPer1kTokens"], 0.003);

    let calls = provider_calls(&app, "acme", &session, 4).await;
    let summary: Vec<(String, i64, String)> = calls
        .iter()
        .map(|c| {
            (
                c["provider"].as_str().unwrap().to_string(),
                c["attempt"].as_i64().unwrap(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("vendorA".to_string(), 1, "error".to_string()),
            ("vendorA".to_string(), 2, "error".to_string()),
            ("vendorA".to_string(), 3, "error".to_string()),
            ("vendorB".to_string(), 1, "success".to_string()),
        ]
    );
    let shown = transcript(&app, "acme", &session, 2).await;
    assert_eq!(shown["messages"][1]["provider"], "vendorB");
    assert_eq!(shown["messages"][1]["fallbackUsed"], true);

    // A provider that recovers within its retries answers itself.
    app.providers
        .simulation("vendorA")
        .unwrap()
        .set(Simulation {
            fail_first: 1,
            ..Simulation::default()
        });
    let recovered = json_of(send(&app, "acme", &session, "k-recovered", "Again").await).await;
    assert_eq!(recovered["metadata"]["providerUsed"], "vendorA");
    assert_eq!(recovered["metadata"]["attempts"][0]["retries"], 1);
    assert_eq!(recovered["metadata"]["fallbackUsed"], false);
}
both_backends!(
    a_failing_primary_is_retried_then_replaced_by_the_fallback,
    a_failing_primary_is_retried_then_replaced_by_the_fallback
);

async fn rate_limits_and_timeouts_are_retried_as_configured(backend: Backend) {
    let app = app_with(backend, |settings| {
        simulate(
            settings,
            "vendorA",
            Simulation {
                rate_limit_rate: 1.0,
                retry_after_ms: 40,
                ..Simulation::default()
            },
        );
        simulate(
            settings,
            "vendorB",
            Simulation {
                timeout_rate: 1.0,
                ..Simulation::default()
            },
        );
    })
    .await;
    let agent = create_agent(&app, "acme", support_agent()).await;
    let session = create_session(&app, "acme", &agent).await;

    // Both fail: 503 with every attempt, the user message kept, nothing billed.
    let failed = send(&app, "acme", &session, "k-429", "Hello").await;
    assert_eq!(failed.status(), 503);
    let body = json_of(failed).await;
    assert_eq!(body["error"]["code"], "ALL_PROVIDERS_FAILED");
    let attempts = body["error"]["details"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["provider"], "vendorA");
    assert_eq!(attempts[0]["errorCode"], "RATE_LIMITED");
    assert_eq!(attempts[0]["httpStatus"], 429);
    assert_eq!(attempts[0]["retries"], 2);
    assert_eq!(attempts[1]["provider"], "vendorB");
    assert_eq!(attempts[1]["errorCode"], "TIMEOUT");
    assert_eq!(attempts[1]["retries"], 2);

    let calls = provider_calls(&app, "acme", &session, 6).await;
    assert!(
        calls[..3]
            .iter()
            .all(|c| c["errorCode"] == "RATE_LIMITED" && c["retryAfterMs"] == 40)
    );
    // Each wait honoured retryAfterMs (40 ms) rather than the 5 ms backoff: the attempts
    // were recorded at least that far apart.
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(calls[i]["createdAt"].as_str().unwrap()).unwrap()
    };
    assert!((at(1) - at(0)).num_milliseconds() >= 40);
    assert!((at(2) - at(1)).num_milliseconds() >= 40);
    assert!(calls[3..].iter().all(|c| c["errorCode"] == "TIMEOUT"));
    let shown = transcript(&app, "acme", &session, 1).await;
    assert_eq!(shown["messages"][0]["role"], "user");

    // A retry of the same request once a provider is back answers the same message: the
    // user message is not recorded twice.
    app.providers
        .simulation("vendorA")
        .unwrap()
        .set(Simulation::default());
    let retried = send(&app, "acme", &session, "k-429", "Hello").await;
    assert_eq!(retried.status(), 201);
    let retried = json_of(retried).await;
    assert_eq!(retried["metadata"]["providerUsed"], "vendorA");
    let shown = transcript(&app, "acme", &session, 2).await;
    assert_eq!(shown["messages"][0]["role"], "user");
    assert_eq!(shown["messages"][1]["role"], "assistant");

    // A provider asking to wait longer than the configured maximum is not waited for.
    app.providers
        .simulation("vendorA")
        .unwrap()
        .set(Simulation {
            rate_limit_rate: 1.0,
            retry_after_ms: 60_000,
            ..Simulation::default()
        });
    app.providers
        .simulation("vendorB")
        .unwrap()
        .set(Simulation::default());
    let impatient = json_of(send(&app, "acme", &session, "k-long-wait", "Hi").await).await;
    assert_eq!(impatient["metadata"]["attempts"][0]["retries"], 0);
    assert_eq!(impatient["metadata"]["providerUsed"], "vendorB");
}
both_backends!(
    rate_limits_and_timeouts_are_retried_as_configured,
    rate_limits_and_timeouts_are_retried_as_configured
);

/// Reads a whole Server-Sent Events body into (event, data) pairs.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            (!data.is_empty()).then(|| (event, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

async fn send_streamed(
    app: &TestApp,
    session: &str,
    key: &str,
    content: &str,
) -> reqwest::Response {
    app.request(
        Method::POST,
        &format!("/v1/sessions/{session}/messages"),
        "acme",
    )
    .header("idempotency-key", key)
    .header("accept", "text/event-stream")
    .json(&json!({"content": content}))
    .send()
    .await
    .unwrap()
}

async fn replies_stream_and_are_billed_even_when_the_client_leaves(backend: Backend) {
    let app = app_with(backend, |settings| {
        simulate(
            settings,
            "vendorA",
            Simulation {
                chunk_chars: 5,
                ..Simulation::default()
            },
        );
    })
    .await;
    let agent = create_agent(&app, "acme", support_agent()).await;
    let session = create_session(&app, "acme", &agent).await;

    // A whole stream: chunks, then `done` with the JSON answer's body.
    let response = send_streamed(&app, &session, "k-stream", "Stream this please").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = parse_sse(&response.text().await.unwrap());
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done");
    let chunks: String = events
        .iter()
        .filter(|(event, _)| event == "chunk")
        .map(|(_, data)| data["content"].as_str().unwrap())
        .collect();
    assert!(events.len() > 3, "the reply came in several chunks");
    assert_eq!(chunks, done["message"]["content"].as_str().unwrap());
    assert_eq!(done["metadata"]["streamed"], true);
    assert!(done["metadata"]["usage"]["tokensOut"].as_u64().unwrap() > 0);

    // A replay of a stream: one `done` event, replayed.
    let replay = send_streamed(&app, &session, "k-stream", "Stream this please").await;
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    let events = parse_sse(&replay.text().await.unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1["metadata"]["idempotency"]["replayed"], true);
    assert_eq!(events[0].1["message"], done["message"]);

    // The client leaves after the first chunk; the reply is still recorded whole and billed.
    app.providers
        .simulation("vendorA")
        .unwrap()
        .set(Simulation {
            chunk_chars: 2,
            chunk_delay_ms: 30,
            ..Simulation::default()
        });
    let mut leaving = send_streamed(&app, &session, "k-leave", "I will not wait for this").await;
    let first = leaving.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    drop(leaving);
    let shown = transcript(&app, "acme", &session, 4).await;
    let reply = &shown["messages"][3];
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["streamed"], true);
    assert_eq!(reply["clientDisconnected"], true);
    assert_eq!(reply["incomplete"], false);
    assert!(
        reply["content"]
            .as_str()
            .unwrap()
            .ends_with("How else can I help?")
    );
    assert!(reply["usage"]["costMicros"].as_u64().unwrap() > 0);

    // A primary that fails before its first chunk is replaced by the fallback.
    app.providers
        .simulation("vendorA")
        .unwrap()
        .set(Simulation {
            error_rate: 1.0,
            ..Simulation::default()
        });
    let events = parse_sse(
        &send_streamed(&app, &session, "k-fallback", "Fall back")
            .await
            .text()
            .await
            .unwrap(),
    );
    let (_, done) = events.last().unwrap();
    assert_eq!(done["metadata"]["providerUsed"], "vendorB");
    assert_eq!(done["metadata"]["fallbackUsed"], true);

    // One that fails after its first chunk is not: what it produced is the (incomplete,
    // billed) reply.
    app.providers
        .simulation("vendorA")
        .unwrap()
        .set(Simulation {
            chunk_chars: 4,
            fail_after_chunks: Some(2),
            ..Simulation::default()
        });
    let events = parse_sse(
        &send_streamed(&app, &session, "k-cut", "Cut me off")
            .await
            .text()
            .await
            .unwrap(),
    );
    let (_, done) = events.last().unwrap();
    assert_eq!(done["metadata"]["providerUsed"], "vendorA");
    assert_eq!(done["message"]["incomplete"], true);
    assert_eq!(
        done["message"]["content"].as_str().unwrap().chars().count(),
        8
    );
    assert_eq!(done["metadata"]["usage"]["tokensOut"], 2);
    assert_eq!(done["metadata"]["attempts"].as_array().unwrap().len(), 1);
}
both_backends!(
    replies_stream_and_are_billed_even_when_the_client_leaves,
    replies_stream_and_are_billed_even_when_the_client_leaves
);

async fn a_retry_after_a_crash_mid_call_neither_loses_nor_doubles(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let key = create_tenant(&log, "acme").await;
    let mut settings = db.settings();
    quick(&mut settings);
    settings.idempotency_lock_secs = 1;
    settings.provider_retry.attempt_timeout_ms = 10_000;
    // The provider takes long enough for the crash to land while it is being called.
    let mut slow = settings.clone();
    simulate(
        &mut slow,
        "vendorA",
        Simulation {
            latency_ms: 5_000,
            ..Simulation::default()
        },
    );
    let crashing = Process::start(slow);
    let client = reqwest::Client::new();
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    let agent: Value = client
        .post(url(crashing.port, "/v1/agents"))
        .header("x-api-key", &key)
        .json(&support_agent())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = agent["agent"]["id"].as_str().unwrap().to_string();
    let session: Value = client
        .post(url(crashing.port, "/v1/sessions"))
        .header("x-api-key", &key)
        .json(&json!({"agentId": agent}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["session"]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/sessions/{session}/messages");
    let request = client
        .post(url(crashing.port, &path))
        .header("x-api-key", &key)
        .header("idempotency-key", "k-crash")
        .json(&json!({"content": "Do not lose me"}));
    let in_flight = tokio::spawn(request.send());
    // Crash once the user message is durable and the provider is being called.
    let stream = eventlog::StreamId::new(
        domain::names::TenantId::parse("acme").unwrap(),
        "Session",
        session.clone(),
    );
    eventually(Duration::from_secs(10), || async {
        (log.version(&stream).await.ok()? >= 2).then_some(())
    })
    .await;
    crashing.kill();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the client saw no answer"
    );

    // The client retries against a restarted gateway.
    let mut app = spawn_app_on(db.share(), |settings| {
        quick(settings);
        settings.idempotency_lock_secs = 1;
    })
    .await;
    let retried = eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(Method::POST, &path, &key)
            .header("idempotency-key", "k-crash")
            .json(&json!({"content": "Do not lose me"}))
            .send()
            .await
            .ok()?;
        // 409 IDEMPOTENCY_IN_FLIGHT until the crashed request's lock expires.
        (response.status() != 409).then_some(response)
    })
    .await;
    assert_eq!(retried.status(), 201);
    let body = json_of(retried).await;
    assert_eq!(body["metadata"]["providerUsed"], "vendorA");

    app.keys.insert("acme".to_string(), key.clone());
    let shown = transcript(&app, "acme", &session, 2).await;
    let messages = shown["messages"].as_array().unwrap();
    assert_eq!(messages[0]["content"], "Do not lose me");
    assert_eq!(messages[1]["role"], "assistant");
    // Exactly one billed reply in the log.
    let events = log.load(&stream, 0).await.unwrap();
    let replies = events
        .iter()
        .filter(|e| e.event_type == "AssistantMessageRecorded")
        .count();
    let users = events
        .iter()
        .filter(|e| e.event_type == "UserMessageRecorded")
        .count();
    assert_eq!((users, replies), (1, 1));
    // A replay now answers from the record.
    let replay = app
        .request(Method::POST, &path, "acme")
        .header("idempotency-key", "k-crash")
        .json(&json!({"content": "Do not lose me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
}
both_backends!(
    a_retry_after_a_crash_mid_call_neither_loses_nor_doubles,
    a_retry_after_a_crash_mid_call_neither_loses_nor_doubles
);

type Received = (Option<String>, Value);

/// A scripted OpenAI-compatible server: each call takes the next scripted answer.
#[derive(Clone, Default)]
struct FakeOpenAi {
    script: Arc<Mutex<Vec<Scripted>>>,
    /// Each request's `Authorization` header and body.
    requests: Arc<Mutex<Vec<Received>>>,
}

#[derive(Clone)]
enum Scripted {
    Reply(&'static str, u64, u64),
    Status(u16, Vec<(&'static str, &'static str)>),
    Malformed,
    Slow(Duration),
    Stream(Vec<&'static str>),
}

impl FakeOpenAi {
    async fn start(&self) -> String {
        use axum::response::IntoResponse;
        let fake = self.clone();
        let handler = move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
            let fake = fake.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                fake.requests.lock().unwrap().push((auth, body.0));
                let next = {
                    let mut script = fake.script.lock().unwrap();
                    if script.is_empty() {
                        Scripted::Reply("default", 1, 1)
                    } else {
                        script.remove(0)
                    }
                };
                let reply = |text: &str, tokens_in: u64, tokens_out: u64| {
                    axum::Json(json!({
                        "id": "chatcmpl-1",
                        "model": "gpt-test",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out},
                    }))
                    .into_response()
                };
                match next {
                    Scripted::Reply(text, tokens_in, tokens_out) => {
                        reply(text, tokens_in, tokens_out)
                    }
                    Scripted::Status(status, headers) => {
                        let mut response = (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            "{\"error\":{\"message\":\"scripted\"}}",
                        )
                            .into_response();
                        for (name, value) in headers {
                            response.headers_mut().insert(name, value.parse().unwrap());
                        }
                        response
                    }
                    Scripted::Malformed => {
                        (axum::http::StatusCode::OK, "{\"choices\": 42}").into_response()
                    }
                    Scripted::Slow(delay) => {
                        tokio::time::sleep(delay).await;
                        reply("too late", 1, 1)
                    }
                    Scripted::Stream(deltas) => {
                        let mut body = String::new();
                        for delta in deltas {
                            let event = json!({"model": "gpt-test", "choices": [{"index": 0, "delta": {"content": delta}}]});
                            body.push_str(&format!("data: {event}\n\n"));
                        }
                        let usage = json!({"model": "gpt-test", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}});
                        body.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
                        ([("content-type", "text/event-stream")], body).into_response()
                    }
                }
            }
        };
        let router =
            axum::Router::new().route("/v1/chat/completions", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}/v1")
    }

    fn script(&self, steps: Vec<Scripted>) {
        *self.script.lock().unwrap() = steps;
    }
}

/// The message types recorded on a session's stream, counted.
async fn session_events(app: &TestApp, tenant: &str, session: &str) -> (usize, usize, usize) {
    let log = app.db.log().await;
    let stream = eventlog::StreamId::new(
        domain::names::TenantId::parse(tenant).unwrap(),
        "Session",
        session.to_string(),
    );
    let events = log.load(&stream, 0).await.unwrap();
    log.db().close().await;
    let count = |kind: &str| events.iter().filter(|e| e.event_type == kind).count();
    (
        count("UserMessageRecorded"),
        count("AssistantMessageRecorded"),
        count("ProviderCallAttempted"),
    )
}

/// The user messages of a session's transcript (once it shows `messages` in all), in order.
async fn user_messages(app: &TestApp, tenant: &str, session: &str, messages: usize) -> Vec<String> {
    let shown = transcript(app, tenant, session, messages).await;
    shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

/// Messages decide on the session, agent and budgets as their gateway last saw them; what
/// another gateway (or request) changed meanwhile must still be seen, and a key claimed with
/// its message must still be answered once.
async fn messages_decided_on_cached_state_see_every_change(backend: Backend) {
    let a = app_with(backend, |_| {}).await;
    let mut b = spawn_app_on(a.db.share(), quick).await;
    b.keys = a.keys.clone();
    let agent = create_agent(&a, "acme", support_agent()).await;
    let session = create_session(&a, "acme", &agent).await;

    // Ten concurrent requests with one key: one message, one billed reply, the same answer.
    let sends = (0..10).map(|_| send(&a, "acme", &session, "same-key", "Only once"));
    let mut answers = Vec::new();
    for response in futures::future::join_all(sends).await {
        match response.status().as_u16() {
            200 | 201 => answers.push(json_of(response).await),
            _ => {
                let (status, code) = error_code(response).await;
                assert_eq!((status, code.as_str()), (409, "IDEMPOTENCY_IN_FLIGHT"));
            }
        }
    }
    assert!(!answers.is_empty());
    for answer in &answers {
        assert_eq!(answer["message"]["id"], answers[0]["message"]["id"]);
        assert_eq!(
            answer["message"]["content"],
            answers[0]["message"]["content"]
        );
    }
    assert_eq!(session_events(&a, "acme", &session).await, (1, 1, 1));

    // The two gateways take turns on one session: each one's cached session is behind the
    // other's writes every time.
    for i in 0..6 {
        let app = if i % 2 == 0 { &b } else { &a };
        let response = send(
            app,
            "acme",
            &session,
            &format!("turn-{i}"),
            &format!("Turn {i}"),
        )
        .await;
        assert_eq!(response.status(), 201, "turn {i}");
    }
    assert_eq!(session_events(&a, "acme", &session).await, (7, 7, 7));
    assert_eq!(
        user_messages(&a, "acme", &session, 14).await,
        [
            "Only once",
            "Turn 0",
            "Turn 1",
            "Turn 2",
            "Turn 3",
            "Turn 4",
            "Turn 5"
        ]
    );

    // A hard budget set through b, on a budget stream a holds as empty: a refuses.
    let spent = b
        .request(Method::PUT, "/v1/budgets/tenant", "acme")
        .json(&json!({"monthlyLimitUsd": "0.000001", "enforcement": "hard"}))
        .send()
        .await
        .unwrap();
    assert_eq!(spent.status(), 200);
    let (status, code) = error_code(send(&a, "acme", &session, "over-budget", "More").await).await;
    assert_eq!((status, code.as_str()), (402, "BUDGET_EXCEEDED"));
    let lifted = b
        .request(Method::DELETE, "/v1/budgets/tenant", "acme")
        .send()
        .await
        .unwrap();
    assert!(lifted.status().is_success());
    let response = send(&a, "acme", &session, "after-budget", "More").await;
    assert_eq!(response.status(), 201);

    // The agent archived through b, which a holds as active: a refuses.
    let second = create_session(&a, "acme", &agent).await;
    assert_eq!(
        send(&a, "acme", &second, "warm", "Hello").await.status(),
        201
    );
    let archived = b
        .request(Method::DELETE, &format!("/v1/agents/{agent}"), "acme")
        .send()
        .await
        .unwrap();
    assert!(archived.status().is_success());
    let (status, code) = error_code(send(&a, "acme", &second, "archived", "Hello?").await).await;
    assert_eq!((status, code.as_str()), (409, "AGENT_ARCHIVED"));

    // The session closed through b, which a holds as open: a refuses.
    let closed = b
        .request(
            Method::POST,
            &format!("/v1/sessions/{session}/close"),
            "acme",
        )
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success());
    let (status, code) = error_code(send(&a, "acme", &session, "closed", "Hello?").await).await;
    assert_eq!((status, code.as_str()), (409, "SESSION_CLOSED"));
    assert_eq!(session_events(&a, "acme", &session).await, (8, 8, 8));
    assert_eq!(session_events(&a, "acme", &second).await, (1, 1, 1));
}
both_backends!(
    messages_decided_on_cached_state_see_every_change,
    messages_decided_on_cached_state_see_every_change
);

/// A session's cached state is handed to the message that reads it (not copied) and put back
/// by its commit; messages arriving meanwhile read the session from the log. Concurrent
/// messages with their own keys on one session all land, each once, and a later message sees
/// all of them.
async fn concurrent_messages_on_one_session_each_land_once(backend: Backend) {
    let app = app_with(backend, |_| {}).await;
    let agent = create_agent(&app, "acme", support_agent()).await;
    let session = create_session(&app, "acme", &agent).await;
    assert_eq!(
        send(&app, "acme", &session, "first", "First")
            .await
            .status(),
        201
    );
    let sends = (0..8).map(|i| {
        let app = &app;
        let session = &session;
        async move {
            let response = send(app, "acme", session, &format!("c-{i}"), &format!("C {i}")).await;
            (i, response.status().as_u16())
        }
    });
    for (i, status) in futures::future::join_all(sends).await {
        assert_eq!(status, 201, "message {i}");
    }
    let response = send(&app, "acme", &session, "last", "Last").await;
    assert_eq!(response.status(), 201);
    assert_eq!(session_events(&app, "acme", &session).await, (10, 10, 10));
    let users = user_messages(&app, "acme", &session, 20).await;
    assert_eq!(users.len(), 10);
    assert_eq!((users[0].as_str(), users[9].as_str()), ("First", "Last"));
    for i in 0..8 {
        let content = format!("C {i}");
        assert_eq!(
            users.iter().filter(|u| **u == content).count(),
            1,
            "{content}"
        );
    }
}
both_backends!(
    concurrent_messages_on_one_session,
    concurrent_messages_on_one_session_each_land_once
);

async fn the_openai_adapter_handles_replies_streams_and_failures(backend: Backend) {
    let fake = FakeOpenAi::default();
    let base_url = fake.start().await;
    let app = app_with(backend, |settings| {
        settings.providers.insert(
            "openai".into(),
            ProviderSettings {
                kind: ProviderKind::Openai,
                usd_per_1k_tokens: Usd(1000),
                default_model: "gpt-test".into(),
                base_url: Some(base_url),
                api_key: Some("sk-test".to_string().into()),
                ..ProviderSettings::default()
            },
        );
    })
    .await;
    let mut config = support_agent();
    config["primaryProvider"] = json!("openai");
    config["models"] = json!({"openai": "gpt-test-mini"});
    let agent = create_agent(&app, "acme", config).await;
    let session = create_session(&app, "acme", &agent).await;

    // A reply, with the provider's own token counts priced exactly.
    fake.script(vec![Scripted::Reply("Hello from the model", 30, 20)]);
    let body = json_of(send(&app, "acme", &session, "o-1", "Hi model").await).await;
    assert_eq!(body["message"]["content"], "Hello from the model");
    assert_eq!(body["metadata"]["providerUsed"], "openai");
    assert_eq!(body["metadata"]["usage"]["tokensIn"], 30);
    assert_eq!(body["metadata"]["usage"]["tokensOut"], 20);
    assert_eq!(body["metadata"]["usage"]["costMicros"], 50);
    let (auth, request) = fake.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(request["model"], "gpt-test-mini");
    assert_eq!(request["temperature"], 0.3);
    assert_eq!(request["max_tokens"], 256);
    assert_eq!(
        request["messages"][0],
        json!({"role": "system", "content": "You are helpful."})
    );
    assert_eq!(
        request["messages"][1],
        json!({"role": "user", "content": "Hi model"})
    );

    // 429 with retry-after-ms, then success: one retry.
    fake.script(vec![
        Scripted::Status(429, vec![("retry-after-ms", "30")]),
        Scripted::Reply("after the wait", 5, 5),
    ]);
    let body = json_of(send(&app, "acme", &session, "o-2", "Again").await).await;
    assert_eq!(body["metadata"]["providerUsed"], "openai");
    assert_eq!(body["metadata"]["attempts"][0]["retries"], 1);
    assert_eq!(
        body["metadata"]["attempts"][0]["calls"][0]["retryAfterMs"],
        30
    );
    assert_eq!(
        body["metadata"]["attempts"][0]["calls"][0]["errorCode"],
        "RATE_LIMITED"
    );

    // 5xx three times: the fallback answers.
    fake.script(vec![
        Scripted::Status(500, vec![]),
        Scripted::Status(502, vec![]),
        Scripted::Status(503, vec![]),
    ]);
    let body = json_of(send(&app, "acme", &session, "o-3", "Fail over").await).await;
    assert_eq!(body["metadata"]["providerUsed"], "vendorB");
    assert_eq!(
        body["metadata"]["attempts"][0]["errorCode"],
        "PROVIDER_ERROR"
    );
    assert_eq!(body["metadata"]["attempts"][0]["httpStatus"], 503);

    // Absurd token counts are a bad response, retried and then failed over, never billed.
    fake.script(vec![
        Scripted::Reply("absurd", u64::MAX, 1),
        Scripted::Reply("absurd", 1, u64::MAX / 2),
        Scripted::Reply("absurd", 1_000_000_001, 0),
    ]);
    let body = json_of(send(&app, "acme", &session, "o-absurd", "Count this").await).await;
    assert_eq!(body["metadata"]["providerUsed"], "vendorB");
    assert_eq!(body["metadata"]["attempts"][0]["errorCode"], "BAD_RESPONSE");
    assert!(body["metadata"]["usage"]["costMicros"].as_u64().unwrap() < 1_000_000);

    // A malformed body, a timeout, then a 400 that is not retried.
    fake.script(vec![
        Scripted::Malformed,
        Scripted::Slow(Duration::from_millis(1_000)),
        Scripted::Status(400, vec![]),
    ]);
    let body = json_of(send(&app, "acme", &session, "o-4", "Odd answers").await).await;
    let calls = body["metadata"]["attempts"][0]["calls"].as_array().unwrap();
    let codes: Vec<&str> = calls
        .iter()
        .map(|c| c["errorCode"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["BAD_RESPONSE", "TIMEOUT", "REQUEST_REJECTED"]);
    assert_eq!(body["metadata"]["providerUsed"], "vendorB");
    fake.script(vec![Scripted::Status(401, vec![])]);
    let body = json_of(send(&app, "acme", &session, "o-5", "Unauthorised").await).await;
    assert_eq!(
        body["metadata"]["attempts"][0]["retries"], 0,
        "4xx is not retried"
    );

    // A streamed reply, with the usage the server reports at the end.
    fake.script(vec![Scripted::Stream(vec!["Str", "eam", "ed!"])]);
    let events = parse_sse(
        &send_streamed(&app, &session, "o-6", "Stream it")
            .await
            .text()
            .await
            .unwrap(),
    );
    let chunks: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "chunk")
        .map(|(_, d)| d["content"].as_str().unwrap())
        .collect();
    assert_eq!(chunks, ["Str", "eam", "ed!"]);
    let (_, done) = events.last().unwrap();
    assert_eq!(done["message"]["content"], "Streamed!");
    assert_eq!(done["metadata"]["usage"]["tokensIn"], 11);
    assert_eq!(done["metadata"]["usage"]["tokensOut"], 7);
    let (_, request) = fake.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(request["stream"], true);
    assert_eq!(request["stream_options"]["include_usage"], true);
}
both_backends!(
    the_openai_adapter_handles_replies_streams_and_failures,
    the_openai_adapter_handles_replies_streams_and_failures
);

/// The conversation read models of a tenant as the API shows them.
async fn conversation_views(app: &TestApp, key: &str) -> Value {
    let get = |path: String| async move {
        json_of(app.with_key(Method::GET, &path, key).send().await.unwrap()).await
    };
    let agents = get("/v1/agents?includeArchived=true".into()).await;
    let sessions = get("/v1/sessions".into()).await;
    let mut views = json!({ "agents": agents, "sessions": sessions });
    for session in sessions["sessions"].as_array().unwrap() {
        let id = session["id"].as_str().unwrap();
        views[format!("transcript-{id}")] = get(format!("/v1/sessions/{id}/transcript")).await;
        views[format!("calls-{id}")] = get(format!("/v1/sessions/{id}/provider-calls")).await;
    }
    views
}

async fn the_demo_seed_builds_a_tenant_whose_projections_rebuild_identically(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = db.settings();
    quick(&mut settings);
    // Some replies need the fallback, so the provider-call log has failures in it.
    simulate(
        &mut settings,
        "vendorB",
        Simulation {
            error_rate: 1.0,
            ..Simulation::default()
        },
    );
    let summary = cli::demo::demo(settings.clone(), "demo", "Demo Corporation")
        .await
        .expect("the demo seeds");
    assert_eq!(summary["messages"], 8);
    assert_eq!(summary["agents"].as_array().unwrap().len(), 2);
    let keys = summary["apiKeys"].as_array().unwrap();
    let roles: Vec<&str> = keys
        .iter()
        .map(|k| k["roles"][0].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["admin", "writer", "analyst"]);
    let admin = keys[0]["key"].as_str().unwrap().to_string();
    let again = cli::demo::demo(settings, "demo", "Demo Corporation").await;
    assert!(again.is_err(), "a tenant is seeded once");

    let app = spawn_app_on(db.share(), |_| {}).await;
    let before = eventually(Duration::from_secs(10), || async {
        let views = conversation_views(&app, &admin).await;
        let complete = views["sessions"]["sessions"]
            .as_array()?
            .iter()
            .all(|s| s["messageCount"] == 4);
        complete.then_some(views)
    })
    .await;
    assert_eq!(before["sessions"]["sessions"].as_array().unwrap().len(), 4);
    let sales = &before["sessions"]["sessions"][3]["id"];
    let calls = &before[format!("calls-{}", sales.as_str().unwrap())]["calls"];
    assert_eq!(calls[0]["provider"], "vendorB");
    assert_eq!(calls[0]["status"], "error");

    let log = app.db.log().await;
    for name in ["agents", "sessions", "transcripts", "provider_calls"] {
        let projector = projections::all()
            .into_iter()
            .find(|p| p.name() == name)
            .unwrap();
        workers::rebuild::rebuild(&log, projector.as_ref(), 7, |_, _| {})
            .await
            .unwrap();
    }
    assert_eq!(
        conversation_views(&app, &admin).await,
        before,
        "row for row"
    );

    // The analyst key sees the demo's usage: eight billed replies over four sessions.
    let analyst = keys[2]["key"].as_str().unwrap();
    let today = chrono::Utc::now().date_naive();
    let rollup = eventually(Duration::from_secs(10), || async {
        let body = json_of(
            app.with_key(
                Method::GET,
                &format!("/v1/usage/rollup?from={today}&to={today}"),
                analyst,
            )
            .send()
            .await
            .ok()?,
        )
        .await;
        (body["totals"]["messages"] == 8).then_some(body)
    })
    .await;
    assert_eq!(rollup["totals"]["sessions"], 4);
    // vendorB failed throughout, so vendorA answered everything (directly or as fallback).
    assert_eq!(rollup["byProvider"][0]["provider"], "vendorA");
    assert_eq!(rollup["byProvider"].as_array().unwrap().len(), 1);
}
both_backends!(
    the_demo_seed_builds_a_tenant_whose_projections_rebuild_identically,
    the_demo_seed_builds_a_tenant_whose_projections_rebuild_identically
);
