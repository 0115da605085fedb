//! Health, readiness, metrics, the OpenAPI document, request ids and shutdown.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, eventually, spawn_app};

async fn operational_routes_answer_without_a_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    app.create("acme", "users", json!({"id": "u"})).await;
    let ready: Value = eventually(Duration::from_secs(10), || async {
        let ready: Value = app
            .client
            .get(app.url("/ready"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (ready["projectors"]["entities"]["lagEvents"] == 0).then_some(ready)
    })
    .await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["database"], "ok");
    let expected_backend = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(ready["backend"], expected_backend);

    // Any token is a method to HTTP: methods other than the standard ones share one label,
    // so a client inventing methods cannot start series without end.
    for (method, path) in [("BREW", "/v1/users"), ("X-ANY", "/nowhere")] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let answer = app
            .client
            .request(method, app.url(path))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_client_error(), "{}", answer.status());
    }

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(!text.contains("BREW") && !text.contains("X-ANY"), "{text}");
    assert!(
        text.contains("gateway_http_requests_total{method=\"other\""),
        "{text}"
    );
    for needle in [
        "gateway_http_requests_total{method=\"POST\",route=\"/v1/{entity}\",status=\"201\"} 1",
        "gateway_commands_total{command=\"CreateEntity\",outcome=\"accepted\"} 1",
        "gateway_events_appended_total{aggregate_type=\"Entity\"} 1",
        "gateway_projector_lag_events{projector=\"entities\"} 0",
        "gateway_projector_lag_seconds{projector=\"entities\"}",
        "gateway_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
both_backends!(
    operational_routes_answer_without_a_tenant,
    operational_routes_answer_without_a_tenant
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() {
    let app = spawn_app(Backend::Sqlite).await;
    let document: Value = app.public_json("/openapi.json").await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/{entity}", "get"),
        ("/v1/{entity}", "post"),
        ("/v1/{entity}/{id}", "get"),
        ("/v1/{entity}/{id}", "patch"),
        ("/v1/{entity}/{id}", "put"),
        ("/v1/{entity}/{id}", "delete"),
        ("/v1/{entity}/{id}/history", "get"),
        ("/v1/_transact", "post"),
        ("/v1/entity-types", "get"),
        ("/v1/entity-types", "post"),
        ("/v1/entity-types/{name}", "get"),
        ("/v1/entity-types/{name}", "patch"),
        ("/v1/entity-types/_import", "post"),
        ("/v1/entity-types/_export", "get"),
        ("/v1/events", "get"),
        ("/v1/me", "get"),
        ("/v1/tenants", "get"),
        ("/v1/tenants", "post"),
        ("/v1/tenants/{id}", "get"),
        ("/v1/tenants/{id}", "patch"),
        ("/v1/api-keys", "get"),
        ("/v1/api-keys", "post"),
        ("/v1/api-keys/{id}", "get"),
        ("/v1/api-keys/{id}", "delete"),
        ("/v1/events/stream", "get"),
        ("/v1/ws", "get"),
        ("/websocket.schema.json", "get"),
        ("/asyncapi.json", "get"),
        ("/console", "get"),
        ("/console/{asset}", "get"),
        ("/v1/{entity}/{id}/relations/{relation}", "get"),
        ("/v1/{entity}/{id}/relations/{relation}/{target}", "put"),
        ("/v1/{entity}/{id}/relations/{relation}/{target}", "delete"),
        ("/v1/{entity}/{id}/incoming/{source}/{relation}", "get"),
        ("/v1/agents", "get"),
        ("/v1/agents", "post"),
        ("/v1/agents/{agentId}", "get"),
        ("/v1/agents/{agentId}", "put"),
        ("/v1/agents/{agentId}", "patch"),
        ("/v1/agents/{agentId}", "delete"),
        ("/v1/sessions", "get"),
        ("/v1/sessions", "post"),
        ("/v1/sessions/{sessionId}", "get"),
        ("/v1/sessions/{sessionId}/close", "post"),
        ("/v1/sessions/{sessionId}/messages", "post"),
        ("/v1/sessions/{sessionId}/transcript", "get"),
        ("/v1/sessions/{sessionId}/provider-calls", "get"),
        ("/v1/usage/rollup", "get"),
        ("/v1/usage/events", "get"),
        ("/v1/usage/query", "get"),
        ("/v1/budgets", "get"),
        ("/v1/budgets/tenant", "put"),
        ("/v1/budgets/tenant", "delete"),
        ("/v1/budgets/agents/{agentId}", "put"),
        ("/v1/budgets/agents/{agentId}", "delete"),
    ];
    let paths = document["paths"].as_object().unwrap();
    let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        operations,
        expected.len(),
        "no undocumented extras: {paths:?}"
    );
    for (path, method) in expected {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
    assert!(document["components"]["schemas"]["ErrorEnvelope"].is_object());
    // Every route but the public ones declares the credentials and the role it needs.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let public = matches!(
                path.as_str(),
                "/health"
                    | "/ready"
                    | "/metrics"
                    | "/openapi.json"
                    | "/asyncapi.json"
                    | "/websocket.schema.json"
                    | "/console"
                    | "/console/{asset}"
            );
            let security = operation["security"].as_array();
            assert_eq!(
                security.is_some_and(|s| !s.is_empty()),
                !public,
                "{method} {path}: security {security:?}"
            );
        }
    }
    assert!(document["components"]["securitySchemes"]["api_key"].is_object());
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app(Backend::Sqlite).await;
    let given = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "client-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "client-id-123");
    let generated = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "has spaces and is not an id")
        .send()
        .await
        .unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("req_") && id.len() > 10, "{id}");

    // The request id reaches the events' metadata.
    let created = app
        .request(reqwest::Method::POST, "/v1/users", "acme")
        .header("x-request-id", "trace-me")
        .json(&json!({"id": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let log = app.db.log().await;
    let events = eventually(Duration::from_secs(10), || async {
        let events = log.read_after(eventlog::Cursor::START, 100).await.unwrap();
        events.into_iter().find(|e| e.aggregate_type == "Entity")
    })
    .await;
    assert_eq!(events.metadata["requestId"], "trace-me");
    assert_eq!(events.metadata["tenantId"], "acme");
    assert_eq!(events.metadata["command"], "CreateEntity");
    assert!(
        events.metadata["actor"]
            .as_str()
            .unwrap()
            .starts_with("key_")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_serving_and_returns_cleanly() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let health = app.url("/health");
    app.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), app.server)
        .await
        .expect("stopped within the grace period")
        .unwrap()
        .expect("stopped without error");
    assert!(app.client.get(health).send().await.is_err());
}
