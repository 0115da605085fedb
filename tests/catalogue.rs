//! Seed 000's clients out of the box: the `panorama` catalogue of entity types, applied over
//! HTTP or by `gateway tenants create --entity-types panorama`, after which the requests of
//! seed 000's README work as printed there; and a tenant's types exported and imported as is.

use api::auth::jwt::{self, Claims};
use clap::Parser;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use std::time::Duration;

use crate::helpers::{
    Backend, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, TestApp, error_code, eventually, json_of,
    spawn_app,
};

/// A new tenant with no entity types (the test tenants have schemaless `users` and others);
/// its admin key.
async fn bare_tenant(app: &TestApp, id: &str) -> String {
    let response = app
        .as_admin(Method::POST, "/v1/tenants")
        .json(&json!({ "id": id, "name": format!("{id} Inc.") }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let key = json_of(response).await["apiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(Method::GET, "/v1/entity-types", &key)
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    key
}

async fn import(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.with_key(Method::POST, "/v1/entity-types/_import", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn outcomes(body: &Value) -> Vec<(String, String)> {
    body["entityTypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const PANORAMA: [&str; 4] = ["users", "conversations", "messages", "agent-shared-states"];

/// The token of seed 000's README (`service`, `roles`, `tenant`), with the issuer and
/// audience this gateway is configured to require.
fn seed_token(tenant: &str) -> String {
    jwt::sign(
        &Claims {
            service: Some("agent-gateway".into()),
            sub: None,
            roles: vec!["admin".into()],
            tenant: Some(tenant.into()),
            exp: chrono::Utc::now().timestamp() + 300,
            nbf: None,
            iss: Some(JWT_ISSUER.into()),
            aud: json!(JWT_AUDIENCE),
        },
        JWT_SECRET.as_bytes(),
    )
}

async fn seed_000s_readme_works_after_the_panorama_catalogue(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = bare_tenant(&app, "tenant-01").await;
    let first = import(&app, &key, json!({ "catalogue": "panorama" })).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().contains_key("x-event-position"));
    let first = json_of(first).await;
    assert_eq!(
        outcomes(&first),
        PANORAMA.map(|name| (name.to_string(), "defined".to_string()))
    );
    // Idempotent: nothing changes the second time, and nothing is written.
    let again = import(&app, &key, json!({ "catalogue": "panorama" })).await;
    assert_eq!(again.status(), 200);
    assert!(!again.headers().contains_key("x-event-position"));
    assert_eq!(
        outcomes(&json_of(again).await),
        PANORAMA.map(|name| (name.to_string(), "unchanged".to_string()))
    );

    // Seed 000's README, request for request.
    let token = seed_token("tenant-01");
    let created = app
        .client
        .post(app.url("/v1/users"))
        .header("Authorization", format!("Bearer {token}"))
        .header("x-tenant-id", "tenant-01")
        .header("Idempotency-Key", "create-user-001")
        .header("Content-Type", "application/json")
        .body(r#"{ "userId": "user-001", "displayName": "Agent User", "tenantId": "tenant-01" }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let position = created.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(json_of(created).await["id"], "user-001");
    let found = app
        .client
        .get(app.url(r#"/v1/users?where={"userId":"user-001"}"#))
        .header("Authorization", format!("Bearer {token}"))
        .header("x-tenant-id", "tenant-01")
        .header("x-min-position", position)
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
    let found = json_of(found).await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    assert_eq!(found["items"][0]["data"]["displayName"], "Agent User");

    // Its suite's other entities, and the composite id convention of its notes.
    let post =
        |path: &'static str, body: Value| app.with_key(Method::POST, path, &key).json(&body).send();
    let conversation = post(
        "/v1/conversations",
        json!({ "conversationId": "conv-1", "userId": "user-001", "title": "Hello" }),
    )
    .await
    .unwrap();
    assert_eq!(conversation.status(), 201);
    let message = post(
        "/v1/messages",
        json!({ "messageId": "msg-1", "conversationId": "conv-1", "role": "user", "content": "Hi" }),
    )
    .await
    .unwrap();
    assert_eq!(message.status(), 201);
    let orphan = post(
        "/v1/messages",
        json!({ "messageId": "msg-2", "conversationId": "conv-404", "role": "user" }),
    )
    .await
    .unwrap();
    assert!(orphan.status().is_client_error(), "{}", orphan.status());
    let role = post(
        "/v1/messages",
        json!({ "messageId": "msg-3", "conversationId": "conv-1", "role": "robot" }),
    )
    .await
    .unwrap();
    assert_eq!(error_code(role).await, (400, "VALIDATION_ERROR".into()));
    let state = post(
        "/v1/agent-shared-states",
        json!({ "agentName": "agent-name", "userId": "user-1", "conversationId": "conv-1",
                "state": { "step": 2 } }),
    )
    .await
    .unwrap();
    assert_eq!(state.status(), 201);
    let written = state.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(json_of(state).await["id"], "agent-name:user-1:conv-1");
    let read = app
        .with_key(
            Method::GET,
            "/v1/agent-shared-states/agent-name:user-1:conv-1",
            &key,
        )
        .header("x-min-position", written)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(json_of(read).await["data"]["state"]["step"], 2);
}
both_backends!(
    seed_000s_readme_works_after_the_panorama_catalogue,
    seed_000s_readme_works_after_the_panorama_catalogue
);

async fn a_tenants_types_export_and_import_elsewhere_as_they_are(backend: Backend) {
    let app = spawn_app(backend).await;
    let (one, other) = (
        bare_tenant(&app, "tenant-01").await,
        bare_tenant(&app, "tenant-02").await,
    );
    let imported = import(&app, &one, json!({ "catalogue": "panorama" })).await;
    assert_eq!(imported.status(), 200);
    let position = imported.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string();
    let exported = app
        .with_key(Method::GET, "/v1/entity-types/_export", &one)
        .header("x-min-position", position)
        .send()
        .await
        .unwrap();
    let exported = json_of(exported).await;
    let mut names: Vec<&str> = exported["entityTypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut expected = PANORAMA.to_vec();
    expected.sort();
    assert_eq!(names, expected, "{exported}");

    let elsewhere = import(&app, &other, exported.clone()).await;
    assert_eq!(elsewhere.status(), 200);
    assert!(
        outcomes(&json_of(elsewhere).await)
            .iter()
            .all(|(_, outcome)| outcome == "defined")
    );

    // A change records might not satisfy is refused, and nothing of the import is written.
    let narrower = json!({ "entityTypes": [
        { "name": "tags", "fields": { "label": { "type": "string" } } },
        { "name": "users", "key": ["userId"], "schemaless": true, "fields": {
            "userId": { "type": "string", "required": true, "maxLength": 128 },
            "displayName": { "type": "string", "maxLength": 8 } } }
    ]});
    let refused = import(&app, &other, narrower).await;
    assert_eq!(
        error_code(refused).await,
        (409, "INCOMPATIBLE_SCHEMA_CHANGE".into())
    );
    let tags = app
        .with_key(Method::GET, "/v1/entity-types/tags", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.status(), 404, "the whole import is refused");

    // Malformed imports name what is wrong.
    for (body, field) in [
        (json!({}), "catalogue"),
        (json!({ "catalogue": "nope" }), "catalogue"),
        (
            json!({ "catalogue": "panorama", "entityTypes": [] }),
            "catalogue",
        ),
        (
            json!({ "entityTypes": [{ "name": "Bad" }] }),
            "entityTypes[0].name",
        ),
        (
            json!({ "entityTypes": [{ "name": "tenants" }] }),
            "entityTypes[0].name",
        ),
        (
            json!({ "entityTypes": [{ "name": "a", "fields": { "x": { "type": "reference", "references": "nowhere" } } }] }),
            "fields.x.references",
        ),
    ] {
        let response = import(&app, &other, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error = json_of(response).await;
        assert_eq!(
            error["error"]["code"], "VALIDATION_ERROR",
            "{body}: {error}"
        );
        assert_eq!(
            error["error"]["details"]["fields"][0]["field"], field,
            "{body}: {error}"
        );
    }
}
both_backends!(
    a_tenants_types_export_and_import_elsewhere_as_they_are,
    a_tenants_types_export_and_import_elsewhere_as_they_are
);

/// `gateway tenants create --entity-types panorama`: the tenant, its key and seed 000's types
/// in one command; an unknown catalogue is refused before anything is written.
async fn a_tenant_is_created_with_the_panorama_catalogue(backend: Backend) {
    let app = spawn_app(backend).await;
    let run = |args: &'static [&'static str]| {
        let app = &app;
        async move {
            let cli =
                cli::Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))?;
            let mut out = Vec::new();
            cli::run(cli, app.db.settings(), &mut out).await?;
            anyhow::Ok(serde_json::from_slice::<Value>(&out)?)
        }
    };
    let created = run(&[
        "tenants",
        "create",
        "--name",
        "Panorama",
        "--id",
        "tenant-01",
        "--entity-types",
        "panorama",
    ])
    .await
    .unwrap();
    assert_eq!(created["tenant"]["id"], "tenant-01");
    assert_eq!(created["entityTypes"].as_array().unwrap().len(), 4);
    let key = created["apiKey"]["key"].as_str().unwrap().to_string();
    let user = app
        .with_key(Method::POST, "/v1/users", &key)
        .json(
            &json!({ "userId": "user-001", "displayName": "Agent User", "tenantId": "tenant-01" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 201);

    let unknown = run(&[
        "tenants",
        "create",
        "--name",
        "Nope",
        "--id",
        "tenant-02",
        "--entity-types",
        "nope",
    ])
    .await;
    assert!(format!("{:#}", unknown.unwrap_err()).contains("no catalogue 'nope'"));
    let tenant = app
        .as_admin(Method::GET, "/v1/tenants/tenant-02")
        .send()
        .await
        .unwrap();
    assert_eq!(tenant.status(), 404, "nothing was written");
}
both_backends!(
    a_tenant_is_created_with_the_panorama_catalogue,
    a_tenant_is_created_with_the_panorama_catalogue
);
