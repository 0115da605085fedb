//! Process roles: three gateways on one PostgreSQL database, one serving the API, one running
//! the projectors, one the relay; commands, read-your-writes across processes, projections and
//! publishing all work, and each process says what it does.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestDb, create_tenant, eventually, json_of, spawn_app_on};
use crate::streams::{Names, nats_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_with_one_role_each_work_as_one_gateway() {
    let db = TestDb::new(Backend::Postgres).await;
    let names = Names::new();
    let api = spawn_app_on(db.share(), |s| {
        s.roles = "api".into();
        names.apply(s, &nats_url());
    })
    .await;
    let projectors = spawn_app_on(db.share(), |s| {
        s.roles = "projectors".into();
        s.projector_poll_ms = 50;
    })
    .await;
    let relay = spawn_app_on(db.share(), |s| {
        s.roles = "relay".into();
        names.apply(s, &nats_url());
    })
    .await;
    let log = db.log().await;
    let key = create_tenant(&log, "acme").await;

    for (app, roles) in [
        (&api, json!(["api"])),
        (&projectors, json!(["projectors"])),
        (&relay, json!(["relay"])),
    ] {
        let ready = app.public_json("/ready").await;
        assert_eq!(ready["roles"], roles, "{ready}");
        let metrics = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let role = roles[0].as_str().unwrap();
        assert!(
            metrics.contains(&format!("gateway_process_role{{role=\"{role}\"}} 1")),
            "{metrics}"
        );
    }
    // Only the API process serves the API.
    let elsewhere = projectors
        .with_key(Method::GET, "/v1/me", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);

    // A command on the API process (its key projected by the projector process), read back
    // there at its position: the projector process applied it.
    let created = eventually(Duration::from_secs(20), || async {
        let response = api
            .with_key(Method::POST, "/v1/entity-types", &key)
            .json(&json!({"name": "notes", "schemaless": true}))
            .send()
            .await
            .ok()?;
        (response.status() == 201).then_some(response)
    })
    .await;
    assert_eq!(created.status(), 201);
    let written = api
        .with_key(Method::POST, "/v1/notes", &key)
        .json(&json!({"id": "n1", "text": "across processes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 201);
    let position = written.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string();
    let read = api
        .with_key(Method::GET, "/v1/notes/n1", &key)
        .header("x-min-position", &position)
        .header("x-consistency", "strict")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(json_of(read).await["data"]["text"], "across processes");

    // The relay process published it.
    let published = eventually(Duration::from_secs(20), || async {
        let messages = names.messages().await;
        messages
            .iter()
            .find(|m| {
                serde_json::from_slice::<Value>(&m.payload)
                    .is_ok_and(|p| p["aggregateId"] == "notes/n1")
            })
            .map(|m| m.subject.to_string())
    })
    .await;
    assert!(published.contains("EntityCreated"), "{published}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_no_roles_are_refused_at_start() {
    let db = TestDb::new(Backend::Sqlite).await;
    for (roles, expected) in [
        ("api,cooking", "unknown process role 'cooking'"),
        (" , ", "at least one role"),
    ] {
        let mut settings = db.settings();
        settings.roles = roles.into();
        let error = cli::startup::Application::build(settings)
            .await
            .err()
            .expect("refused");
        assert!(error.to_string().contains(expected), "{error}");
    }
}
