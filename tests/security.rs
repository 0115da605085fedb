//! Authentication, authorization, tenant isolation, idempotency and rate limits.

use std::collections::HashSet;
use std::time::Duration;

use api::auth::jwt::{self, Claims};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    ADMIN_KEY, Backend, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, TestApp, create_session, error_code,
    eventually, json_of, not_found, send, spawn_app, spawn_app_on, spawn_app_with,
};

fn claims(roles: &[&str], tenant: Option<&str>) -> Claims {
    Claims {
        service: Some("billing".into()),
        sub: None,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        tenant: tenant.map(str::to_string),
        exp: chrono::Utc::now().timestamp() + 300,
        nbf: None,
        iss: Some(JWT_ISSUER.into()),
        aud: json!(JWT_AUDIENCE),
    }
}

fn token(claims: &Claims) -> String {
    jwt::sign(claims, JWT_SECRET.as_bytes())
}

fn bearer(app: &TestApp, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(token)
}

/// Issues a key with `roles` to `tenant` over HTTP and waits until it works.
async fn issue_key(
    app: &TestApp,
    tenant: &str,
    roles: &[&str],
    expires_at: Option<String>,
) -> (String, String) {
    let response = app
        .request(Method::POST, "/v1/api-keys", tenant)
        .json(&json!({ "name": "test", "roles": roles, "expiresAt": expires_at }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let key = body["apiKey"]["key"].as_str().unwrap().to_string();
    let id = body["apiKey"]["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), || async {
        let status = app
            .with_key(Method::GET, "/v1/me", &key)
            .send()
            .await
            .ok()?
            .status();
        (status == 200).then_some(())
    })
    .await;
    (id, key)
}

async fn every_authentication_failure_is_a_bare_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let (revoked_id, revoked) = issue_key(&app, "acme", &["reader"], None).await;
    let response = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{revoked_id}"),
            "acme",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(Duration::from_secs(10), || async {
        let status = app
            .with_key(Method::GET, "/v1/me", &revoked)
            .send()
            .await
            .ok()?
            .status();
        (status == 401).then_some(())
    })
    .await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (_, expiring) = issue_key(&app, "acme", &["reader"], Some(soon)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let valid = app.keys["acme"].clone();
    let (_, secret) = valid.split_at(28);
    let wrong_secret = format!(
        "{}{}",
        &valid[..28],
        secret.chars().rev().collect::<String>()
    );
    let unknown_id = format!("gw_key_zzzzzzzzzzzzzzzzzzzz_{secret}");
    let mut expired = claims(&["admin"], Some("acme"));
    expired.exp = chrono::Utc::now().timestamp() - 120;
    let mut wrong_audience = claims(&["admin"], Some("acme"));
    wrong_audience.aud = json!("another-service");
    let mut wrong_issuer = claims(&["admin"], Some("acme"));
    wrong_issuer.iss = Some("someone".into());
    let good = token(&claims(&["admin"], Some("acme")));
    let bad_signature = format!("{}x", &good[..good.len() - 1]);
    let forged = jwt::sign(&claims(&["admin"], Some("acme")), b"another secret");
    let none_alg = {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = good.split('.').nth(1).unwrap();
        format!(
            "{}.{payload}.",
            engine.encode(br#"{"alg":"none","typ":"JWT"}"#)
        )
    };

    let requests: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no credentials", app.client.get(app.url("/v1/users"))),
        (
            "malformed key",
            app.with_key(Method::GET, "/v1/users", "gw_nope"),
        ),
        (
            "wrong secret",
            app.with_key(Method::GET, "/v1/users", &wrong_secret),
        ),
        (
            "unknown key",
            app.with_key(Method::GET, "/v1/users", &unknown_id),
        ),
        (
            "revoked key",
            app.with_key(Method::GET, "/v1/users", &revoked),
        ),
        (
            "expired key",
            app.with_key(Method::GET, "/v1/users", &expiring),
        ),
        (
            "bad signature",
            bearer(&app, Method::GET, "/v1/users", &bad_signature),
        ),
        (
            "forged token",
            bearer(&app, Method::GET, "/v1/users", &forged),
        ),
        (
            "alg none",
            bearer(&app, Method::GET, "/v1/users", &none_alg),
        ),
        (
            "expired token",
            bearer(&app, Method::GET, "/v1/users", &token(&expired)),
        ),
        (
            "wrong audience",
            bearer(&app, Method::GET, "/v1/users", &token(&wrong_audience)),
        ),
        (
            "wrong issuer",
            bearer(&app, Method::GET, "/v1/users", &token(&wrong_issuer)),
        ),
        (
            "not a token",
            bearer(&app, Method::GET, "/v1/users", "abc.def"),
        ),
        (
            "basic auth",
            app.client
                .get(app.url("/v1/users"))
                .basic_auth("user", Some("pass")),
        ),
    ];
    let mut messages = HashSet::new();
    for (case, request) in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{case}");
        messages.insert(body["error"]["message"].as_str().unwrap().to_string());
    }
    assert_eq!(messages.len(), 1, "the answer never says which part failed");

    // The valid credentials work.
    assert_eq!(
        app.with_key(Method::GET, "/v1/users", &valid)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        bearer(&app, Method::GET, "/v1/users", &good)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
both_backends!(
    every_authentication_failure_is_a_bare_401,
    every_authentication_failure_is_a_bare_401
);

async fn mismatched_unknown_and_suspended_tenants_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .request(Method::GET, "/v1/users", "acme")
        .header("x-tenant-id", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "TENANT_MISMATCH".into()));
    let service = token(&claims(&["reader"], Some("acme")));
    let response = bearer(&app, Method::GET, "/v1/users", &service)
        .header("x-tenant-id", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "TENANT_MISMATCH".into()));
    let stranger = token(&claims(&["reader"], Some("nobody")));
    let response = bearer(&app, Method::GET, "/v1/users", &stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "TENANT_UNKNOWN".into()));
    // The tenant may come from the header alone.
    let headless = token(&claims(&["reader"], None));
    let response = bearer(&app, Method::GET, "/v1/users", &headless)
        .header("x-tenant-id", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = bearer(&app, Method::GET, "/v1/users", &headless)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (400, "TENANT_REQUIRED".into()));

    for (status, expected) in [("suspended", 403), ("active", 200)] {
        let response = app
            .as_admin(Method::PATCH, "/v1/tenants/acme")
            .json(&json!({ "status": status }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["tenant"]["status"], status);
        eventually(Duration::from_secs(10), || async {
            let key = app
                .request(Method::GET, "/v1/users", "acme")
                .send()
                .await
                .ok()?;
            let jwt = bearer(&app, Method::GET, "/v1/users", &service)
                .send()
                .await
                .ok()?;
            (key.status() == expected && jwt.status() == expected).then_some(())
        })
        .await;
    }
    let response = app
        .as_admin(Method::PATCH, "/v1/tenants/acme")
        .json(&json!({ "status": "suspended" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refused = eventually(Duration::from_secs(10), || async {
        let response = app
            .request(Method::GET, "/v1/users", "acme")
            .send()
            .await
            .ok()?;
        (response.status() == 403).then_some(response)
    })
    .await;
    assert_eq!(error_code(refused).await, (403, "TENANT_SUSPENDED".into()));
}
both_backends!(
    mismatched_unknown_and_suspended_tenants_are_refused,
    mismatched_unknown_and_suspended_tenants_are_refused
);

/// Every operation of the OpenAPI document with its required role.
async fn operations(app: &TestApp) -> Vec<(Method, String, Option<String>)> {
    let document: Value = app.public_json("/openapi.json").await;
    let mut out = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(security) = operation["security"].as_array() else {
                continue;
            };
            let role = security[0]
                .as_object()
                .and_then(|s| s.values().next())
                .and_then(|scopes| scopes.get(0))
                .and_then(|r| r.as_str())
                .map(str::to_string);
            out.push((method.to_uppercase().parse().unwrap(), path.clone(), role));
        }
    }
    out
}

fn grants(held: &str, required: &str) -> bool {
    let held: domain::roles::Role = held.parse().unwrap();
    held.grants(required.parse().unwrap())
}

async fn every_route_checks_the_role_it_declares(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut principals = vec![("superadmin".to_string(), ADMIN_KEY.to_string())];
    for role in ["admin", "writer", "reader", "analyst"] {
        let (_, key) = issue_key(&app, "acme", &[role], None).await;
        principals.push((role.to_string(), key));
    }
    let operations = operations(&app).await;
    assert!(operations.len() >= 14);
    for (method, path, required) in &operations {
        let concrete = path
            .replace("{entity}", "users")
            .replace("{id}", "missing-id");
        for (held, key) in &principals {
            let response = app
                .with_key(method.clone(), &concrete, key)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let allowed = required.as_deref().is_none_or(|r| grants(held, r));
            if allowed {
                assert_ne!(
                    status, 403,
                    "{held} on {method} {path} (requires {required:?})"
                );
                assert_ne!(status, 401);
            } else {
                assert_eq!(
                    error_code(response).await,
                    (403, "FORBIDDEN".into()),
                    "{held} on {method} {path} (requires {required:?})"
                );
            }
        }
    }
}

both_backends!(
    every_route_checks_the_role_it_declares,
    every_route_checks_the_role_it_declares
);

async fn another_tenant_gets_404_on_every_get_route(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create("tenant-a", "users", json!({ "id": "secret-user" }))
        .await;
    assert_eq!(created.status(), 201);
    let at = created.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string();
    let (key_id, _) = issue_key(&app, "tenant-a", &["reader"], None).await;
    let owner = app
        .request(Method::GET, "/v1/users/secret-user", "tenant-a")
        .header("x-min-position", &at)
        .send()
        .await
        .unwrap();
    assert_eq!(owner.status(), 200);

    let mut swept = 0;
    for (method, path, required) in operations(&app).await {
        if method != Method::GET
            || required.as_deref() == Some("superadmin")
            || !path.ends_with("{id}")
        {
            continue;
        }
        let concrete = if path.starts_with("/v1/api-keys") {
            path.replace("{id}", &key_id)
        } else {
            path.replace("{entity}", "users")
                .replace("{id}", "secret-user")
        };
        let response = app
            .request(Method::GET, &concrete, "tenant-b")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "GET {concrete} as tenant B");
        swept += 1;
    }
    assert!(swept >= 2, "swept {swept} routes");
    let users: Value = app
        .request(Method::GET, "/v1/users", "tenant-b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["items"], json!([]));
    let keys: Value = app
        .request(Method::GET, "/v1/api-keys", "tenant-b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        keys["apiKeys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != key_id.as_str())
    );
    let revoke = app
        .request(
            Method::DELETE,
            &format!("/v1/api-keys/{key_id}"),
            "tenant-b",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(revoke).await, "apiKey");
}
both_backends!(
    another_tenant_gets_404_on_every_get_route,
    another_tenant_gets_404_on_every_get_route
);

/// Events of record `users/{id}` across the test tenants, read from the streams themselves
/// (a stream load is not held back by other transactions, unlike the tail).
async fn entity_events(app: &TestApp, id: &str) -> u64 {
    let log = app.db.log().await;
    let mut count = 0;
    for tenant in crate::helpers::TENANTS {
        let stream = eventlog::StreamId::new(
            domain::names::TenantId::parse(*tenant).unwrap(),
            "Entity",
            format!("users/{id}"),
        );
        count += log.version(&stream).await.unwrap();
    }
    log.db().close().await;
    count
}

fn create_with_key(app: &TestApp, tenant: &str, key: &str, body: Value) -> reqwest::RequestBuilder {
    app.request(Method::POST, "/v1/users", tenant)
        .header("idempotency-key", key)
        .json(&body)
}

async fn sequential_replays_return_the_first_response_and_write_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({ "id": "user-001", "displayName": "Agent User", "tenantId": "acme" });
    let first = create_with_key(&app, "acme", "create-user-001", body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("x-idempotent-replay").is_none());
    let first_body = first.bytes().await.unwrap();
    for _ in 0..20 {
        // Same document, members in another order: the same request.
        let reordered =
            json!({ "tenantId": "acme", "displayName": "Agent User", "id": "user-001" });
        let replay = create_with_key(&app, "acme", "create-user-001", reordered)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 201);
        assert_eq!(replay.headers()["x-idempotent-replay"], "true");
        assert_eq!(replay.headers()["etag"], "\"1\"");
        assert_eq!(replay.bytes().await.unwrap(), first_body);
    }
    let other = create_with_key(&app, "acme", "create-user-001", json!({ "id": "user-002" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(other).await,
        (422, "IDEMPOTENCY_KEY_REUSED".into())
    );
    // Tenant B's use of the same key is its own.
    let other_tenant = create_with_key(&app, "globex", "create-user-001", body)
        .send()
        .await
        .unwrap();
    assert_eq!(other_tenant.status(), 201);
    assert!(other_tenant.headers().get("x-idempotent-replay").is_none());

    assert_eq!(
        entity_events(&app, "user-001").await,
        2,
        "one event per tenant"
    );
    // A refusal is an answer too: its replay is the same refusal.
    let duplicate = create_with_key(&app, "acme", "dup", json!({ "id": "user-001" }))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 409);
    let duplicate_body = duplicate.bytes().await.unwrap();
    let again = create_with_key(&app, "acme", "dup", json!({ "id": "user-001" }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.headers()["x-idempotent-replay"], "true");
    assert_eq!(again.bytes().await.unwrap(), duplicate_body);
}
both_backends!(
    sequential_replays_return_the_first_response_and_write_nothing,
    sequential_replays_return_the_first_response_and_write_nothing
);

/// Seed 004's scope: a key names one request per tenant and operation (the route's operation
/// id). The same key on another operation is another request; on the same operation with
/// another body it is a reuse.
async fn a_key_names_one_request_per_operation(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = create_with_key(&app, "acme", "k-1", json!({ "id": "scoped-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 201);
    let agent = app
        .request(Method::POST, "/v1/agents", "acme")
        .header("idempotency-key", "k-1")
        .json(&json!({ "name": "Scoped", "primaryProvider": "vendorA" }))
        .send()
        .await
        .unwrap();
    assert_eq!(agent.status(), 201, "another operation: its own request");
    let agent = json_of(agent).await["agent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let session = create_session(&app, "acme", &agent).await;
    let message = send(&app, "acme", &session, "k-1", "Hello").await;
    assert_eq!(message.status(), 201, "a third operation: its own request");
    assert!(message.headers().get("x-idempotent-replay").is_none());

    // Each operation replays its own answer.
    let replay = create_with_key(&app, "acme", "k-1", json!({ "id": "scoped-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    assert_eq!(json_of(replay).await["id"], "scoped-1");
    let replay = send(&app, "acme", &session, "k-1", "Hello").await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    // The same operation with another request is still a reuse.
    let reused = create_with_key(&app, "acme", "k-1", json!({ "id": "scoped-2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(reused).await,
        (422, "IDEMPOTENCY_KEY_REUSED".into())
    );
    assert_eq!(entity_events(&app, "scoped-1").await, 1);
    assert_eq!(entity_events(&app, "scoped-2").await, 0);
    // The scope is the operation id the OpenAPI document gives the route.
    let log = app.db.log().await;
    let scopes: Vec<(String,)> = log
        .db()
        .fetch_all_as(eventlog::Statement::new(
            "SELECT scope FROM idempotency_records WHERE idempotency_key = 'k-1' ORDER BY scope",
        ))
        .await
        .unwrap();
    let scopes: Vec<String> = scopes.into_iter().map(|(scope,)| scope).collect();
    assert_eq!(scopes, ["create_agent", "create_entity", "send_message"]);
    let document: Value = app.public_json("/openapi.json").await;
    for (path, method, id) in [
        ("/v1/{entity}", "post", "create_entity"),
        ("/v1/agents", "post", "create_agent"),
        ("/v1/sessions/{sessionId}/messages", "post", "send_message"),
    ] {
        assert_eq!(document["paths"][path][method]["operationId"], id, "{path}");
    }
    log.db().close().await;
}
both_backends!(
    a_key_names_one_request_per_operation,
    a_key_names_one_request_per_operation
);

/// A record stored before keys had a scope (the empty one) still answers for its key until it
/// expires: the same request replays it, on the path of record writes (which claim keys in
/// their group commit) as on a claim; any other request with the key is a reuse.
async fn records_stored_before_keys_had_a_scope_still_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let log = app.db.log().await;
    let body = json!({ "id": "legacy-1" });
    let legacy = eventlog::idempotency::IdempotencyKey {
        tenant_id: "acme".into(),
        scope: eventlog::idempotency::LEGACY_SCOPE.into(),
        key: "before-the-upgrade".into(),
        request_hash: app::idempotency::request_hash("POST", "/v1/users", "acme", &body).into(),
    };
    let stored = eventlog::idempotency::StoredResponse {
        status: 201,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"id":"legacy-1","stored":"before"}"#.to_vec(),
    };
    assert_eq!(
        log.claim_idempotency(&legacy, Duration::from_secs(60))
            .await
            .unwrap(),
        eventlog::idempotency::Claim::Proceed
    );
    log.complete_idempotency(&legacy, &stored).await.unwrap();
    log.db().close().await;
    // The gateway that finds it is a new process (the upgrade), which looks for legacy
    // records once.
    app.server.abort();
    let keys = app.keys.clone();
    let mut app = spawn_app_on(app.db, |_| {}).await;
    app.keys = keys;

    for _ in 0..2 {
        let replay = create_with_key(&app, "acme", "before-the-upgrade", body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 201);
        assert_eq!(replay.headers()["x-idempotent-replay"], "true");
        assert_eq!(json_of(replay).await["stored"], "before");
    }
    let other = create_with_key(
        &app,
        "acme",
        "before-the-upgrade",
        json!({ "id": "legacy-2" }),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        error_code(other).await,
        (422, "IDEMPOTENCY_KEY_REUSED".into())
    );
    assert_eq!(entity_events(&app, "legacy-1").await, 0, "never run again");
    assert_eq!(entity_events(&app, "legacy-2").await, 0);
}
both_backends!(
    records_stored_before_keys_had_a_scope_still_answer,
    records_stored_before_keys_had_a_scope_still_answer
);

async fn concurrent_requests_with_one_key_write_one_event_set(backend: Backend) {
    let app = spawn_app(backend).await;
    let requests = (0..50)
        .map(|_| create_with_key(&app, "acme", "concurrent-1", json!({ "name": "once" })).send());
    let responses = futures::future::join_all(requests).await;
    let mut bodies = HashSet::new();
    let mut in_flight = 0;
    for response in responses {
        let response = response.unwrap();
        match response.status().as_u16() {
            201 => {
                bodies.insert(response.bytes().await.unwrap());
            }
            409 => {
                assert_eq!(error_code(response).await.1, "IDEMPOTENCY_IN_FLIGHT");
                in_flight += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(bodies.len(), 1, "every success is the same response");
    assert!(in_flight < 50);
    let body: Value = serde_json::from_slice(bodies.iter().next().unwrap()).unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(entity_events(&app, id).await, 1);
    // Once the first has finished, everyone gets the replay.
    let late = create_with_key(&app, "acme", "concurrent-1", json!({ "name": "once" }))
        .send()
        .await
        .unwrap();
    assert_eq!(late.headers()["x-idempotent-replay"], "true");
}
both_backends!(
    concurrent_requests_with_one_key_write_one_event_set,
    concurrent_requests_with_one_key_write_one_event_set
);

async fn a_retry_after_the_server_died_replays_without_new_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({ "id": "crash-user" });
    let first = create_with_key(&app, "acme", "crash-1", body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first_body = first.bytes().await.unwrap();
    // Kill the server without a graceful shutdown: whatever it committed is all that is left,
    // exactly as if it had died before its response reached the client.
    app.server.abort();
    let keys = app.keys.clone();
    let mut restarted = spawn_app_on(app.db, |_| {}).await;
    restarted.keys = keys;
    let retry = create_with_key(&restarted, "acme", "crash-1", body)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["x-idempotent-replay"], "true");
    assert_eq!(retry.bytes().await.unwrap(), first_body);
    assert_eq!(entity_events(&restarted, "crash-user").await, 1);
}
both_backends!(
    a_retry_after_the_server_died_replays_without_new_events,
    a_retry_after_the_server_died_replays_without_new_events
);

async fn a_key_held_by_a_request_that_died_is_taken_over_after_its_lock(backend: Backend) {
    let app = spawn_app_with(backend, |settings| settings.idempotency_lock_secs = 1).await;
    let body = json!({ "id": "orphan" });
    // A request claimed the key and died before committing anything.
    let log = app.db.log().await;
    let key = eventlog::idempotency::IdempotencyKey {
        tenant_id: "acme".into(),
        scope: "create_entity".into(),
        key: "orphaned".into(),
        request_hash: app::idempotency::request_hash("POST", "/v1/users", "acme", &body).into(),
    };
    let claim = log
        .claim_idempotency(&key, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(claim, eventlog::idempotency::Claim::Proceed);

    let early = create_with_key(&app, "acme", "orphaned", body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(early).await,
        (409, "IDEMPOTENCY_IN_FLIGHT".into())
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let retry = create_with_key(&app, "acme", "orphaned", body)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert!(retry.headers().get("x-idempotent-replay").is_none());
    assert_eq!(entity_events(&app, "orphan").await, 1);
}
both_backends!(
    a_key_held_by_a_request_that_died_is_taken_over_after_its_lock,
    a_key_held_by_a_request_that_died_is_taken_over_after_its_lock
);

async fn a_principal_past_its_budget_gets_429(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .as_admin(Method::PATCH, "/v1/tenants/globex")
        .json(&json!({ "rateLimitPerMinute": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(Duration::from_secs(10), || async {
        let response = app
            .request(Method::GET, "/v1/me", "globex")
            .send()
            .await
            .ok()?;
        (response.headers().get("ratelimit-limit")? == "5").then_some(())
    })
    .await;
    // The budget may already be partly spent by the wait above; spend the rest.
    let mut refused = None;
    for _ in 0..6 {
        let response = app
            .request(Method::GET, "/v1/users", "globex")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["ratelimit-limit"], "5");
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let refused = refused.expect("the sixth request at the latest is refused");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(error_code(refused).await, (429, "RATE_LIMITED".into()));
    // Another principal of the same tenant has its own budget; other tenants are untouched.
    let service = token(&claims(&["reader"], Some("globex")));
    assert_eq!(
        bearer(&app, Method::GET, "/v1/users", &service)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.request(Method::GET, "/v1/users", "acme")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
both_backends!(
    a_principal_past_its_budget_gets_429,
    a_principal_past_its_budget_gets_429
);

async fn a_platform_admin_onboards_a_tenant_over_http(backend: Backend) {
    let app = spawn_app(backend).await;
    let request = || {
        app.as_admin(Method::POST, "/v1/tenants")
            .header("idempotency-key", "onboard-initech")
            .json(&json!({ "id": "initech", "name": "Initech" }))
    };
    let created = request().send().await.unwrap();
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["tenant"]["id"], "initech");
    assert_eq!(body["apiKey"]["roles"], json!(["admin"]));
    let key = body["apiKey"]["key"].as_str().unwrap().to_string();
    let me: Value = eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(Method::GET, "/v1/me", &key)
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    })
    .await;
    assert_eq!(me["tenant"]["name"], "Initech");
    assert_eq!(me["roles"], json!(["admin"]));

    // A replay confirms the creation but never shows the secret again.
    let replay = request().send().await.unwrap();
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed["apiKey"]["id"], body["apiKey"]["id"]);
    assert!(replayed["apiKey"]["key"].is_null());

    let again = app
        .as_admin(Method::POST, "/v1/tenants")
        .json(&json!({ "id": "initech", "name": "Initech 2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(again).await,
        (409, "TENANT_ALREADY_EXISTS".into())
    );
    let listed: Value = eventually(Duration::from_secs(10), || async {
        let listed: Value = app
            .as_admin(Method::GET, "/v1/tenants")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (listed["tenants"].as_array()?.len() == 5).then_some(listed)
    })
    .await;
    assert!(
        listed["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "initech")
    );
    let me: Value = app
        .as_admin(Method::GET, "/v1/me")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(me["tenant"].is_null());
    assert_eq!(me["roles"], json!(["superadmin"]));
}
both_backends!(
    a_platform_admin_onboards_a_tenant_over_http,
    a_platform_admin_onboards_a_tenant_over_http
);

async fn key_use_is_recorded_without_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let (id, key) = issue_key(&app, "acme", &["reader"], None).await;
    let log = app.db.log().await;
    let (events_before, _) = log.backlog(eventlog::Cursor::START).await.unwrap();
    for _ in 0..5 {
        assert_eq!(
            app.with_key(Method::GET, "/v1/users", &key)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let listed: Value = eventually(Duration::from_secs(15), || async {
        let listed: Value = app
            .request(Method::GET, &format!("/v1/api-keys/{id}"), "acme")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        listed["apiKey"]["lastUsedAt"].is_string().then_some(listed)
    })
    .await;
    assert!(
        listed["apiKey"].get("key").is_none(),
        "the secret is never listed"
    );
    let (events_after, _) = log.backlog(eventlog::Cursor::START).await.unwrap();
    assert_eq!(events_after, events_before, "using a key writes no event");
}
both_backends!(
    key_use_is_recorded_without_events,
    key_use_is_recorded_without_events
);

async fn expired_idempotency_records_are_pruned(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let log = db.log().await;
    let key = eventlog::idempotency::IdempotencyKey {
        tenant_id: "acme".into(),
        scope: "create_entity".into(),
        key: "old".into(),
        request_hash: "h".into(),
    };
    assert_eq!(
        log.claim_idempotency(&key, Duration::from_secs(60))
            .await
            .unwrap(),
        eventlog::idempotency::Claim::Proceed
    );
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        log.prune_idempotency(past).await.unwrap(),
        0,
        "young records stay"
    );
    let future = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(log.prune_idempotency(future).await.unwrap(), 1);
    assert_eq!(
        log.claim_idempotency(&key, Duration::from_secs(60))
            .await
            .unwrap(),
        eventlog::idempotency::Claim::Proceed,
        "a pruned key is new again"
    );
}
both_backends!(
    expired_idempotency_records_are_pruned,
    expired_idempotency_records_are_pruned
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_gateway_prints_a_platform_key_on_its_first_start_only() {
    let db = crate::helpers::TestDb::new(Backend::Sqlite).await;
    let mut settings = db.settings();
    settings.admin_key = None;
    let mut first = cli::startup::Application::build(settings.clone())
        .await
        .unwrap();
    let key = first
        .take_bootstrap_key()
        .expect("a key on the first start");
    assert!(key.starts_with("gw_key_platformbootstrap000_"));
    let address = format!("http://127.0.0.1:{}", first.port());
    let token = first.shutdown_token();
    let server = tokio::spawn(first.run_until_stopped());
    let client = reqwest::Client::new();
    let tenants = eventually(Duration::from_secs(10), || async {
        let response = client
            .get(format!("{address}/v1/tenants"))
            .header("x-api-key", &key)
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    assert_eq!(tenants.status(), 200);
    token.cancel();
    server.await.unwrap().unwrap();

    let mut second = cli::startup::Application::build(settings).await.unwrap();
    assert_eq!(second.take_bootstrap_key(), None, "shown once");
}
