//! What a hostile tenant sends: bodies nested to the parser's limit, NUL characters, huge
//! strings and objects, odd Unicode. Each is refused with a clear 4xx or stored and served;
//! none stops the readers of the log for anyone else.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, error_code, eventually, json_of, spawn_app_with};
use crate::streams::{Names, nats_url};

fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!({ "a": value });
    }
    value
}

/// A body whose `deep` field nests `depth` levels below the body's own object.
fn body_with_depth(id: &str, depth: usize) -> String {
    format!(
        r#"{{"id":"{id}","deep":{}1{}}}"#,
        "{\"a\":".repeat(depth - 1),
        "}".repeat(depth - 1)
    )
}

/// A response body deeper than serde_json's default limit.
async fn deep_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let bytes = response.bytes().await.expect("a body");
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
    );
    eventlog::json::parse_deep(&bytes).expect("JSON")
}

/// The log position a command's response reports, for a read that must include it.
fn position(response: &reqwest::Response) -> String {
    response.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string()
}

async fn send_raw(app: &TestApp, method: Method, path: &str, body: String) -> reqwest::Response {
    app.request(method, path, "acme")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent")
}

async fn deep_bodies_are_refused_with_a_clear_code(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    // 64 levels (the body's object and 63 below it) are taken and read back.
    let response = send_raw(&app, Method::POST, "/v1/tasks", body_with_depth("ok", 64)).await;
    assert_eq!(response.status(), 201);
    let read = json_of(
        app.request(Method::GET, "/v1/tasks/ok", "acme")
            .header("x-min-position", position(&response))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        read["data"]["deep"] == nested(63),
        "the 64-level body reads back"
    );

    // 65, the 127 that once stopped every reader, and 100,000 are refused, on every verb.
    for depth in [65, 127, 100_000] {
        for (method, path) in [
            (Method::POST, "/v1/tasks"),
            (Method::PUT, "/v1/tasks/ok"),
            (Method::PATCH, "/v1/tasks/ok"),
            (Method::POST, "/v1/_transact"),
        ] {
            let response = send_raw(&app, method.clone(), path, body_with_depth("ok", depth)).await;
            let (status, code) = error_code(response).await;
            assert_eq!(
                (status, code.as_str()),
                (400, "JSON_TOO_DEEP"),
                "{method} {path} at depth {depth}"
            );
        }
    }
}
both_backends!(
    deep_bodies_are_refused,
    deep_bodies_are_refused_with_a_clear_code
);

async fn odd_but_valid_documents_are_stored_or_refused_alike(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;

    // NUL in a value or a key: PostgreSQL cannot store it, so neither backend takes it.
    for body in [
        r#"{"id":"nul-value","text":"a\u0000b"}"#,
        r#"{"id":"nul-key","a\u0000b":1}"#,
        r#"{"id":"a\u0000b"}"#,
    ] {
        let response = send_raw(&app, Method::POST, "/v1/tasks", body.into()).await;
        assert_eq!(
            error_code(response).await,
            (400, "JSON_NUL_CHARACTER".into()),
            "{body}"
        );
    }
    // An escaped backslash before `u0000` is text, not a NUL.
    let response = send_raw(
        &app,
        Method::POST,
        "/v1/tasks",
        r#"{"id":"not-nul","text":"a\\u0000b"}"#.into(),
    )
    .await;
    assert_eq!(response.status(), 201);

    // A 900 KB string, 10,000 keys, and field names from every corner of Unicode.
    let big = "x".repeat(900_000);
    let many: Map<String, Value> = (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let odd = json!({
        "id": "odd",
        "ключ": "значение",
        "键": "值",
        "🦀": "crab",
        "e\u{301}": "combining",
        "\u{202e}rtl": "bidi override",
        "\u{feff}bom": 1,
        "tab\there": "tab",
        "quote\"and\\slash": "escaped",
        "": "the empty key",
    });
    let documents = [
        json!({ "id": "big", "text": big }),
        Value::Object({
            let mut m = many.clone();
            m.insert("id".into(), json!("many"));
            m
        }),
        odd.clone(),
    ];
    let mut last = String::new();
    for document in &documents {
        let response = app.create("acme", "tasks", document.clone()).await;
        assert_eq!(response.status(), 201, "{}", &document["id"]);
        last = position(&response);
    }
    for document in &documents {
        let id = document["id"].as_str().unwrap();
        let read = json_of(
            app.request(Method::GET, &format!("/v1/tasks/{id}"), "acme")
                .header("x-min-position", &last)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let mut written = document.clone();
        written.as_object_mut().unwrap().remove("id");
        assert!(read["data"] == written, "{id} reads back as written");
    }
    // And the lists (the projection) have them all.
    let listed = eventually(Duration::from_secs(10), || async {
        let page = json_of(
            app.request(Method::GET, "/v1/tasks?limit=100", "acme")
                .send()
                .await
                .unwrap(),
        )
        .await;
        (page["items"].as_array().map_or(0, Vec::len) == 4).then_some(page)
    })
    .await;
    let mut odd_data = odd.clone();
    odd_data.as_object_mut().unwrap().remove("id");
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["data"] == odd_data)
    );

    // Ids with a NUL or other control characters in the path are refused, not a 500.
    for path in ["/v1/tasks/a%00b", "/v1/tasks/a%0Ab", "/v1/no%00tes"] {
        let response = app.request(Method::GET, path, "acme").send().await.unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
    }
}
both_backends!(
    odd_documents,
    odd_but_valid_documents_are_stored_or_refused_alike
);

/// An event deeper than serde_json reads by default, already in the log (written by an older
/// version, or by anything that bypasses the API): every reader goes on.
async fn a_deep_event_in_the_log_stops_no_reader(backend: Backend) {
    let names = Names::new();
    let app = spawn_app_with(backend, |s| names.apply(s, &nats_url())).await;
    let log = app.db.log().await;

    let tenant = domain::names::TenantId::parse("acme").unwrap();
    let entity_type = domain::names::EntityTypeName::parse("tasks").unwrap();
    let id = domain::names::EntityId::parse("deep").unwrap();
    let mut data = Map::new();
    data.insert("deep".into(), nested(200));
    let event = domain::entity::EntityEvent::EntityCreated {
        entity_type: entity_type.clone(),
        id: id.clone(),
        data,
    };
    let metadata = domain::metadata::EventMetadata::new(tenant.clone(), "test", "test", "Poison");
    log.append(&[eventlog::StreamAppend {
        stream: api::entity_writes::entity_stream(&tenant, &entity_type, &id),
        expected_version: 0,
        events: vec![eventlog::NewEvent::from_domain(&event).unwrap()],
        metadata,
    }])
    .await
    .expect("appended");

    // Another tenant's write after it is projected and listed.
    let response = app
        .create("globex", "users", json!({ "id": "after" }))
        .await;
    assert_eq!(response.status(), 201);
    eventually(Duration::from_secs(10), || async {
        let page = json_of(
            app.request(Method::GET, "/v1/users", "globex")
                .send()
                .await
                .unwrap(),
        )
        .await;
        (page["items"].as_array().map_or(0, Vec::len) == 1).then_some(())
    })
    .await;
    // The deep record itself is served, by the read model and by the log.
    let read = deep_json(
        app.request(Method::GET, "/v1/tasks/deep", "acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        read["data"]["deep"] == nested(200),
        "the deep record reads back"
    );
    let feed = app
        .request(Method::GET, "/v1/events?entity=tasks", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let feed = deep_json(feed).await;
    assert!(
        feed["items"][0]["payload"]["data"]["deep"] == nested(200),
        "the feed has it"
    );
    // The relay published both.
    eventually(Duration::from_secs(15), || async {
        let messages = names.messages().await;
        let subjects: Vec<_> = messages.iter().map(|m| m.subject.to_string()).collect();
        (subjects.iter().any(|s| s.ends_with("tasks%2Fdeep"))
            && subjects.iter().any(|s| s.ends_with("users%2Fafter")))
        .then_some(())
    })
    .await;
    // And a rebuild reads the whole log.
    for projector in projections::all() {
        workers::rebuild::rebuild(&log, projector.as_ref(), 100, |_, _| {})
            .await
            .unwrap_or_else(|e| panic!("rebuilding {}: {e}", projector.name()));
    }
    let ready = app.public_json("/ready").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    log.db().close().await;
}
both_backends!(
    a_deep_event_stops_no_reader,
    a_deep_event_in_the_log_stops_no_reader
);

/// Runs one statement on the app's database, behind the gateway's back.
async fn behind_the_back(log: &eventlog::EventLog, sql: &str) {
    let mut tx = log.db().begin().await.unwrap();
    eventlog::on_tx!(&mut tx, conn => {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    });
    tx.commit().await.unwrap();
}

/// A projector that cannot apply an event stops alone: the others go on, `/ready` and
/// `/metrics` name the event and the error, and it resumes by itself once the cause is gone.
async fn a_failing_projector_stops_alone_and_says_where(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.projector_poll_ms = 50).await;
    let log = app.db.log().await;
    behind_the_back(&log, "ALTER TABLE entities RENAME TO entities_away").await;

    let created = app.create("acme", "tasks", json!({ "id": "stuck" })).await;
    assert_eq!(created.status(), 201);
    let event_id = json_of(
        app.request(Method::GET, "/v1/events?entity=tasks", "acme")
            .send()
            .await
            .unwrap(),
    )
    .await["items"][0]["eventId"]
        .as_str()
        .unwrap()
        .to_string();

    let ready = eventually(Duration::from_secs(15), || async {
        let ready = app.public_json("/ready").await;
        (ready["projectors"]["entities"]["failingEventId"] == event_id.as_str()).then_some(ready)
    })
    .await;
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["projectors"]["entities"]["status"], "failing");
    assert!(
        ready["projectors"]["entities"]["error"]
            .as_str()
            .unwrap()
            .contains("entities")
    );
    assert_eq!(ready["projectors"]["api_keys"]["status"], "ok");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_projector_failing{projector=\"entities\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "gateway_projector_failing_event{{projector=\"entities\",event_id=\"{event_id}\"}} 1"
    )));

    // The other projectors go on: a key issued now works.
    let issued = json_of(
        app.request(Method::POST, "/v1/api-keys", "acme")
            .json(&json!({ "name": "meanwhile", "roles": ["reader"] }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key = issued["apiKey"]["key"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(Method::GET, "/v1/me", &key)
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    // Fixed behind its back too: it resumes by itself, and the record is there.
    behind_the_back(&log, "ALTER TABLE entities_away RENAME TO entities").await;
    eventually(Duration::from_secs(15), || async {
        let ready = app.public_json("/ready").await;
        (ready["status"] == "ready" && ready["projectors"]["entities"]["status"] == "ok")
            .then_some(())
    })
    .await;
    let read = app
        .request(Method::GET, "/v1/tasks/stuck", "acme")
        .header("x-min-position", position(&created))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    log.db().close().await;
}
both_backends!(
    a_failing_projector_stops_alone,
    a_failing_projector_stops_alone_and_says_where
);
