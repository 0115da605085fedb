//! The entity slice, black-box over HTTP: command → log → projection → query.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, error_code, not_found, spawn_app, spawn_app_with};

fn position(response: &reqwest::Response) -> String {
    response.headers()["x-event-position"]
        .to_str()
        .expect("x-event-position is ASCII")
        .to_string()
}

async fn get_at(app: &TestApp, tenant: &str, path: &str, position: &str) -> reqwest::Response {
    app.request(Method::GET, path, tenant)
        .header("x-min-position", position)
        .send()
        .await
        .unwrap()
}

async fn a_record_lives_through_create_read_patch_conflict_delete(backend: Backend) {
    let app = spawn_app(backend).await;

    let created = app
        .create(
            "acme",
            "users",
            json!({"id": "user-001", "displayName": "Agent User", "tags": ["a"]}),
        )
        .await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["etag"], "\"1\"");
    assert_eq!(created.headers()["location"], "/v1/users/user-001");
    let at = position(&created);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["entity"], "users");
    assert_eq!(body["id"], "user-001");
    assert_eq!(body["version"], 1);
    assert_eq!(
        body["data"],
        json!({"displayName": "Agent User", "tags": ["a"]})
    );

    // Read-your-writes: the GET waits for the projection to pass the create.
    let read = get_at(&app, "acme", "/v1/users/user-001", &at).await;
    assert_eq!(read.status(), 200);
    assert!(read.headers().get("x-projection-lag").is_none());
    assert_eq!(read.headers()["etag"], "\"1\"");
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["data"], body["data"]);
    assert_eq!(read["createdAt"], body["createdAt"]);

    let patched = app
        .request(Method::PATCH, "/v1/users/user-001", "acme")
        .header("if-match", "\"1\"")
        .json(&json!({"displayName": "Renamed", "tags": null, "age": 36}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(patched.headers()["etag"], "\"2\"");
    let at = position(&patched);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(
        patched["data"],
        json!({"displayName": "Renamed", "age": 36})
    );

    let stale = app
        .request(Method::PATCH, "/v1/users/user-001", "acme")
        .header("if-match", "\"1\"")
        .json(&json!({"displayName": "Lost update"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(stale).await, (409, "VERSION_CONFLICT".into()));

    let read: Value = get_at(&app, "acme", "/v1/users/user-001", &at)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["version"], 2);
    assert_eq!(read["data"]["displayName"], "Renamed");

    let deleted = app
        .request(Method::DELETE, "/v1/users/user-001", "acme")
        .header("if-match", "\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let at = position(&deleted);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(deleted["version"], 3);
    assert!(deleted["deletedAt"].is_string());

    let gone = get_at(&app, "acme", "/v1/users/user-001", &at).await;
    assert_eq!(not_found(gone).await, "entity");
    let again = app
        .request(Method::PATCH, "/v1/users/user-001", "acme")
        .json(&json!({"x": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(again).await, "entity");
    let recreate = app.create("acme", "users", json!({"id": "user-001"})).await;
    assert_eq!(
        error_code(recreate).await,
        (409, "ENTITY_ALREADY_EXISTS".into())
    );

    // Admins may still see it.
    let listed: Value = app
        .request(Method::GET, "/v1/users?includeDeleted=true", "acme")
        .header("x-min-position", &at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["id"], "user-001");
    assert!(listed["items"][0]["deletedAt"].is_string());
}
both_backends!(
    a_record_lives_through_create_read_patch_conflict_delete,
    a_record_lives_through_create_read_patch_conflict_delete
);

async fn lists_page_through_every_record_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut last = String::new();
    for i in 0..7 {
        let response = app.create("acme", "projects", json!({"n": i})).await;
        assert_eq!(response.status(), 201);
        last = position(&response);
    }
    // Another type and another tenant stay out of the list.
    app.create("acme", "tasks", json!({})).await;
    let other = app.create("globex", "projects", json!({})).await;
    let other_at = position(&other);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/projects?limit=3".to_string();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = get_at(&app, "acme", &path, &last)
            .await
            .json()
            .await
            .unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered by id");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);

    let globex: Value = get_at(&app, "globex", "/v1/projects", &other_at)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(globex["items"].as_array().unwrap().len(), 1);
}
both_backends!(
    lists_page_through_every_record_once,
    lists_page_through_every_record_once
);

async fn another_tenant_cannot_see_or_change_a_record(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create("tenant-a", "users", json!({"id": "secret"}))
        .await;
    let at = position(&created);
    assert_eq!(
        get_at(&app, "tenant-a", "/v1/users/secret", &at)
            .await
            .status(),
        200
    );

    let read = get_at(&app, "tenant-b", "/v1/users/secret", &at).await;
    assert_eq!(not_found(read).await, "entity");
    let list: Value = get_at(&app, "tenant-b", "/v1/users", &at)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    for method in [Method::PATCH, Method::DELETE] {
        let response = app
            .request(method, "/v1/users/secret", "tenant-b")
            .json(&json!({"x": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(not_found(response).await, "entity");
    }
    // Tenant B may use the same id for its own record.
    assert_eq!(
        app.create("tenant-b", "users", json!({"id": "secret"}))
            .await
            .status(),
        201
    );
}
both_backends!(
    another_tenant_cannot_see_or_change_a_record,
    another_tenant_cannot_see_or_change_a_record
);

async fn bad_requests_get_a_4xx_with_a_stable_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let post = |tenant: Option<&str>, body: &'static str| {
        let request = match tenant {
            Some(tenant) => app.request(Method::POST, "/v1/users", tenant),
            None => app.client.post(app.url("/v1/users")),
        };
        request
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (post(None, "{}"), 401, "UNAUTHORIZED"),
        (
            post(Some("acme"), "{}").header("x-tenant-id", "bad tenant!"),
            403,
            "TENANT_MISMATCH",
        ),
        (post(Some("acme"), "{not json"), 400, "INVALID_JSON"),
        (post(Some("acme"), "[1,2]"), 400, "VALIDATION_ERROR"),
        (post(Some("acme"), r#"{"id": 5}"#), 400, "VALIDATION_ERROR"),
        (
            post(Some("acme"), r#"{"id": "a/b"}"#),
            400,
            "VALIDATION_ERROR",
        ),
        (
            app.request(Method::POST, "/v1/users", "acme").body("{}"),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            app.request(Method::POST, "/v1/usage", "acme")
                .json(&json!({})),
            400,
            "INVALID_ENTITY_TYPE",
        ),
        (
            app.request(Method::POST, "/v1/Users", "acme")
                .json(&json!({})),
            400,
            "INVALID_ENTITY_TYPE",
        ),
        (
            app.request(Method::GET, "/v1/users?limit=0", "acme"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            app.request(Method::GET, "/v1/users?limit=501", "acme"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            app.request(Method::GET, "/v1/users?cursor=%%%", "acme"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            app.request(Method::GET, "/v1/users/x", "acme")
                .header("x-min-position", "nope"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            app.request(Method::GET, "/v1/users/x", "acme")
                .header("x-consistency", "eventually"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            app.request(Method::PATCH, "/v1/users/x", "acme")
                .header("if-match", "yesterday")
                .json(&json!({})),
            400,
            "INVALID_PARAMETER",
        ),
        (
            app.request(Method::POST, "/v1/users", "acme")
                .header("idempotency-key", "k".repeat(256))
                .json(&json!({})),
            400,
            "INVALID_PARAMETER",
        ),
        (
            app.request(Method::GET, "/v1/users/x", "acme"),
            404,
            "RESOURCE_NOT_FOUND",
        ),
        (
            app.request(Method::GET, "/v1/a/b/c", "acme"),
            404,
            "NOT_FOUND",
        ),
        (
            app.request(Method::PUT, "/health", "acme"),
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (
            // The server answers before reading the body and closes the connection: do not
            // let the client pool it for the next request.
            app.request(Method::POST, "/v1/users", "acme")
                .header("content-type", "application/json")
                .header("connection", "close")
                .body(format!("{{\"big\": \"{}\"}}", "x".repeat(2 * 1024 * 1024))),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (index, (request, status, code)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(
            error_code(response).await,
            (status, code.to_string()),
            "case {index}"
        );
    }
    let response = app
        .create("acme", "users", json!({"id": "x", "inner": {"id": 1}}))
        .await;
    assert_eq!(response.status(), 201, "only the top-level id is special");
    let response = app
        .request(Method::PATCH, "/v1/users/x", "acme")
        .json(&json!({"id": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (400, "VALIDATION_ERROR".into()));
}
both_backends!(
    bad_requests_get_a_4xx_with_a_stable_code,
    bad_requests_get_a_4xx_with_a_stable_code
);

async fn a_read_that_cannot_catch_up_says_how_stale_it_is(backend: Backend) {
    // No projector in this process: the read model never moves.
    let app = spawn_app_with(backend, |settings| {
        settings.run_projectors = false;
        settings.consistency_wait_ms = 200;
    })
    .await;
    let created = app.create("acme", "users", json!({"id": "u"})).await;
    assert_eq!(created.status(), 201);
    let at = position(&created);

    let stale = get_at(&app, "acme", "/v1/users", &at).await;
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["x-projection-lag"], "1");

    let strict = app
        .request(Method::GET, "/v1/users/u", "acme")
        .header("x-min-position", &at)
        .header("x-consistency", "strict")
        .send()
        .await
        .unwrap();
    assert_eq!(strict.headers()["retry-after"], "1");
    assert_eq!(error_code(strict).await, (503, "PROJECTION_STALE".into()));
}
both_backends!(
    a_read_that_cannot_catch_up_says_how_stale_it_is,
    a_read_that_cannot_catch_up_says_how_stale_it_is
);

async fn a_patch_that_changes_nothing_records_no_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create("acme", "users", json!({"id": "same", "a": 1}))
        .await;
    let first = position(&created);
    let response = app
        .request(Method::PATCH, "/v1/users/same", "acme")
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(position(&response), first, "no new event, same position");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 1);
}
both_backends!(
    a_patch_that_changes_nothing_records_no_event,
    a_patch_that_changes_nothing_records_no_event
);

async fn concurrent_patches_of_one_record_all_land(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("acme", "counters", json!({"id": "c"})).await;
    let patches: Vec<_> = (0..12)
        .map(|i| {
            app.request(Method::PATCH, "/v1/counters/c", "acme")
                .json(&json!({ format!("k{i}"): i }))
                .send()
        })
        .collect();
    let mut last = eventlog::Cursor::START;
    for response in futures::future::join_all(patches).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200, "no request lost to a conflict");
        last = last.max(position(&response).parse().unwrap());
    }
    let last = last.to_string();
    let record: Value = get_at(&app, "acme", "/v1/counters/c", &last)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["version"], 13);
    assert_eq!(
        record["data"].as_object().unwrap().len(),
        12,
        "no lost update"
    );
}
both_backends!(
    concurrent_patches_of_one_record_all_land,
    concurrent_patches_of_one_record_all_land
);
