//! Seed 004's README, as printed there (`../shared/seeds/004`): its sample requests in order,
//! with the fields its responses show. (Seed 000's README is walked in `catalogue.rs`.)

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, json_of, quick, spawn_app_with};
use crate::usage::{around_today, settled};

async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app.request(method, path, "acme");
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

fn has(value: &Value, fields: &[&str]) {
    for field in fields {
        assert!(value.get(field).is_some(), "no `{field}` in {value}");
    }
}

async fn seed_004s_readme_works_as_printed(backend: Backend) {
    let app = spawn_app_with(backend, quick).await;

    // 1. Get tenant info.
    let me = call(&app, Method::GET, "/v1/me", None).await;
    assert_eq!(me.status(), 200);
    let me = json_of(me).await;
    has(&me["tenant"], &["id", "name", "createdAt"]);
    assert_eq!(me["pricing"]["vendorA"]["usdPer1kTokens"], 0.002);
    assert_eq!(me["pricing"]["vendorB"]["usdPer1kTokens"], 0.003);

    // 2. List agents (after creating one, which the README's seed script does).
    let agent = call(
        &app,
        Method::POST,
        "/v1/agents",
        Some(
            json!({"name": "Customer Support Agent", "primaryProvider": "vendorA",
                    "fallbackProvider": "vendorB", "systemPrompt": "Be helpful."}),
        ),
    )
    .await;
    assert_eq!(agent.status(), 201);
    let agent_id = json_of(agent).await["agent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(agent_id.starts_with("agt_"), "{agent_id}");
    let agents = call(&app, Method::GET, "/v1/agents", None).await;
    assert_eq!(agents.status(), 200);

    // 3. Create a session.
    let session = call(
        &app,
        Method::POST,
        "/v1/sessions",
        Some(json!({"agentId": agent_id, "customerId": "customer_123",
                    "metadata": {"channel": "chat"}})),
    )
    .await;
    assert_eq!(session.status(), 201);
    let session = json_of(session).await["session"].clone();
    has(
        &session,
        &[
            "id",
            "agentId",
            "customerId",
            "status",
            "createdAt",
            "lastActivityAt",
            "metadata",
        ],
    );
    assert_eq!(session["status"], "active");
    assert_eq!(session["metadata"], json!({"channel": "chat"}));
    let session_id = session["id"].as_str().unwrap().to_string();
    assert!(session_id.starts_with("ses_"), "{session_id}");

    // 4. Send a message (idempotent), then retry it.
    let send = || {
        app.request(
            Method::POST,
            &format!("/v1/sessions/{session_id}/messages"),
            "acme",
        )
        .header("Idempotency-Key", "unique-key-123")
        .header("Content-Type", "application/json")
        .body(r#"{ "role": "user", "content": "Hello, how can you help me?" }"#)
        .send()
    };
    let sent = send().await.unwrap();
    assert_eq!(sent.status(), 201);
    let position = sent.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string();
    let sent = json_of(sent).await;
    has(
        &sent["message"],
        &["id", "sessionId", "role", "content", "createdAt"],
    );
    assert_eq!(sent["message"]["role"], "assistant");
    assert!(sent["message"]["id"].as_str().unwrap().starts_with("msg_"));
    let metadata = &sent["metadata"];
    has(
        metadata,
        &[
            "agentId",
            "providerUsed",
            "primaryAttempted",
            "fallbackAttempted",
            "fallbackUsed",
            "attempts",
            "usage",
            "idempotency",
            "requestId",
        ],
    );
    has(
        &metadata["attempts"][0],
        &[
            "provider",
            "status",
            "httpStatus",
            "latencyMs",
            "retries",
            "errorCode",
        ],
    );
    has(
        &metadata["usage"],
        &["tokensIn", "tokensOut", "costUsd", "pricing"],
    );
    assert_eq!(metadata["usage"]["pricing"]["usdPer1kTokens"], 0.002);
    assert_eq!(
        metadata["idempotency"],
        json!({"key": "unique-key-123", "replayed": false})
    );
    let retried = send().await.unwrap();
    assert_eq!(retried.status(), 200, "a retry answers 200 instead of 201");
    let retried = json_of(retried).await;
    assert_eq!(retried["metadata"]["idempotency"]["replayed"], true);
    assert_eq!(retried["message"], sent["message"]);

    // 5. Get the session transcript (read models follow the log: this read waits for the
    // message's position, as a client that must see its own write does).
    let transcript = app
        .request(
            Method::GET,
            &format!("/v1/sessions/{session_id}/transcript"),
            "acme",
        )
        .header("x-min-position", position)
        .send()
        .await
        .unwrap();
    assert_eq!(transcript.status(), 200);

    // 6. Usage rollup and events: one message billed once, whatever the retry.
    settled(&app).await;
    let rollup = call(
        &app,
        Method::GET,
        &format!("/v1/usage/rollup?{}", around_today()),
        None,
    )
    .await;
    assert_eq!(rollup.status(), 200);
    let rollup = json_of(rollup).await;
    has(&rollup["range"], &["from", "to"]);
    has(
        &rollup["totals"],
        &[
            "sessions",
            "messages",
            "tokensIn",
            "tokensOut",
            "tokensTotal",
            "costUsd",
        ],
    );
    assert_eq!(rollup["totals"]["messages"], 1);
    assert_eq!(rollup["totals"]["sessions"], 1);
    assert_eq!(rollup["totals"]["costUsd"], metadata["usage"]["costUsd"]);
    has(
        &rollup["byProvider"][0],
        &[
            "provider",
            "sessions",
            "tokensIn",
            "tokensOut",
            "tokensTotal",
            "costUsd",
        ],
    );
    has(
        &rollup["topAgentsByCost"][0],
        &["agentId", "agentName", "sessions", "tokensTotal", "costUsd"],
    );
    assert_eq!(
        rollup["topAgentsByCost"][0]["agentName"],
        "Customer Support Agent"
    );
    let events = call(
        &app,
        Method::GET,
        &format!("/v1/usage/events?{}&limit=200", around_today()),
        None,
    )
    .await;
    assert_eq!(events.status(), 200);
    let events = json_of(events).await;
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
}
both_backends!(
    seed_004s_readme_works_as_printed,
    seed_004s_readme_works_as_printed
);
