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
        stream: app::entity_writes::entity_stream(&tenant, &entity_type, &id),
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
    tx.execute(eventlog::Statement::new(sql)).await.unwrap();
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
    // On PostgreSQL an event is in the feed once older transactions have ended.
    let event_id = eventually(Duration::from_secs(10), || async {
        let page = json_of(
            app.request(Method::GET, "/v1/events?entity=tasks", "acme")
                .send()
                .await
                .unwrap(),
        )
        .await;
        page["items"][0]["eventId"].as_str().map(str::to_string)
    })
    .await;

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

/// Reads from `stream` until the server closes it; false when it stays open for `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn host(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

async fn slow_silent_and_idle_clients_are_cut_off(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(backend, |s| {
        s.header_read_timeout_ms = 500;
        s.idle_timeout_ms = 1_000;
    })
    .await;
    let connect = || tokio::net::TcpStream::connect(host(&app));
    let mut silent = connect().await.unwrap();
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (mut slow_read, mut slow_write) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if slow_write.write_all(b"x-a: b\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a silent client"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "an idle keep-alive client"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 4096];
        loop {
            match slow_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a client sending its headers a byte at a time"
    );
    trickle.abort();
    // Clients that behave are served meanwhile.
    assert_eq!(app.public_json("/health").await["status"], "ok");
}
both_backends!(
    slow_silent_and_idle_clients_are_cut_off,
    slow_silent_and_idle_clients_are_cut_off
);

async fn connections_beyond_the_limit_wait_their_turn(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.max_connections = 2).await;
    let first = tokio::net::TcpStream::connect(host(&app)).await.unwrap();
    let _second = tokio::net::TcpStream::connect(host(&app)).await.unwrap();
    let fresh = || {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(800))
            .build()
            .unwrap()
    };
    assert!(
        fresh().get(app.url("/health")).send().await.is_err(),
        "a third connection is not served while two are open"
    );
    drop(first);
    eventually(Duration::from_secs(10), || async {
        fresh()
            .get(app.url("/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
}
both_backends!(
    connections_beyond_the_limit_wait_their_turn,
    connections_beyond_the_limit_wait_their_turn
);

async fn long_targets_and_headers_get_the_error_envelope(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let long = format!("/v1/tasks?where={}", "a".repeat(10_000));
    let response = app
        .request(Method::GET, &long, "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (414, "URI_TOO_LONG".into()));
    let response = app
        .request(Method::GET, "/v1/tasks", "acme")
        .header("x-padding", "p".repeat(40_000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (431, "REQUEST_HEADERS_TOO_LARGE".into())
    );
}
both_backends!(
    long_targets_and_headers_get_the_error_envelope,
    long_targets_and_headers_get_the_error_envelope
);

/// A credential works, or stops working, on the very next request after the answer that
/// created or changed it, however far behind the projector is.
async fn credentials_are_read_as_written(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        // A slow projector and a long-lived cache: what would otherwise hide the race.
        s.projector_coalesce_ms = 400;
        s.credential_cache_ms = 60_000;
    })
    .await;
    let issued = app
        .request(Method::POST, "/v1/api-keys", "acme")
        .json(&json!({ "name": "fresh", "roles": ["reader"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    let issued = json_of(issued).await;
    let key = issued["apiKey"]["key"].as_str().unwrap().to_string();
    let id = issued["apiKey"]["id"].as_str().unwrap().to_string();
    let me = app
        .with_key(Method::GET, "/v1/me", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.status(),
        200,
        "a key works on the request after its creation"
    );

    // Revoked: with the revocation's position, the cached key is refused at once.
    let revoked = app
        .request(Method::DELETE, &format!("/v1/api-keys/{id}"), "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let me = app
        .with_key(Method::GET, "/v1/me", &key)
        .header("x-min-position", position(&revoked))
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.status(),
        401,
        "a revoked key fails on the request after the revocation"
    );

    // A tenant created a moment ago is known to a service token at once.
    let created = app
        .as_admin(Method::POST, "/v1/tenants")
        .json(&json!({ "id": "brand-new", "name": "Brand New" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let token = api::auth::jwt::sign(
        &api::auth::jwt::Claims {
            service: Some("svc".into()),
            sub: None,
            roles: vec!["reader".into()],
            tenant: Some("brand-new".into()),
            exp: chrono::Utc::now().timestamp() + 60,
            nbf: None,
            iss: Some(crate::helpers::JWT_ISSUER.into()),
            aud: json!(crate::helpers::JWT_AUDIENCE),
        },
        crate::helpers::JWT_SECRET.as_bytes(),
    );
    let me = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
}
both_backends!(
    credentials_are_read_as_written,
    credentials_are_read_as_written
);

async fn unknown_keys_are_rate_limited_before_the_database(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.unknown_key_lookups_per_minute = 3).await;
    let real = app.keys["acme"].clone();
    let unknown = |n: usize| format!("{}{:0>20}{}", &real[..7], n, &real[27..]);
    for n in 0..3 {
        let response = app
            .with_key(Method::GET, "/v1/me", &unknown(n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "unknown key {n}");
    }
    let response = app
        .with_key(Method::GET, "/v1/me", &unknown(3))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (429, "RATE_LIMITED".into()));
}
both_backends!(
    unknown_keys_are_rate_limited,
    unknown_keys_are_rate_limited_before_the_database
);

/// A new reader key of acme: its token and its id.
async fn reader_key(app: &TestApp, name: &str) -> (String, String) {
    let issued = json_of(
        app.request(Method::POST, "/v1/api-keys", "acme")
            .json(&json!({ "name": name, "roles": ["reader"] }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let text = |field: &str| issued["apiKey"][field].as_str().unwrap().to_string();
    (text("key"), text("id"))
}

/// Reads a Server-Sent Events response until an event of type `wanted` arrives (its data as
/// JSON) or the stream ends (`None`), for at most `within`.
async fn sse_until(
    response: &mut reqwest::Response,
    wanted: &str,
    within: Duration,
) -> Option<Value> {
    let mut text = String::new();
    tokio::time::timeout(within, async {
        loop {
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                };
                if field("event:").as_deref() == Some(wanted) {
                    return field("data:").and_then(|d| serde_json::from_str(&d).ok());
                }
            }
            match response.chunk().await {
                Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    })
    .await
    .expect("the stream answered in time")
}

/// An open live stream follows its credentials: revoked, it closes with a last event saying
/// why; a suspended tenant's stream too; and shutting down closes every stream.
async fn live_streams_follow_their_credentials(backend: Backend) {
    let mut app = spawn_app_with(backend, |s| {
        s.stream_recheck_ms = 200;
        s.shutdown_grace_secs = 3;
    })
    .await;
    let (key, id) = reader_key(&app, "watcher").await;
    let mut stream = app
        .with_key(Method::GET, "/v1/events/stream", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    app.create("acme", "tasks", json!({ "id": "seen" })).await;
    assert!(
        sse_until(&mut stream, "EntityCreated", Duration::from_secs(10))
            .await
            .is_some()
    );
    let revoked = app
        .request(Method::DELETE, &format!("/v1/api-keys/{id}"), "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let close = sse_until(&mut stream, "close", Duration::from_secs(10))
        .await
        .expect("a close event");
    assert_eq!(close["code"], "UNAUTHORIZED");
    assert!(close["cursor"].is_string());
    assert!(
        sse_until(&mut stream, "anything", Duration::from_secs(5))
            .await
            .is_none(),
        "ended"
    );

    // A suspended tenant's stream closes with TENANT_SUSPENDED.
    let mut globex = app
        .request(Method::GET, "/v1/events/stream", "globex")
        .send()
        .await
        .unwrap();
    assert_eq!(globex.status(), 200);
    let suspended = app
        .as_admin(Method::PATCH, "/v1/tenants/globex")
        .json(&json!({ "status": "suspended" }))
        .send()
        .await
        .unwrap();
    assert_eq!(suspended.status(), 200);
    let close = sse_until(&mut globex, "close", Duration::from_secs(10))
        .await
        .expect("a close event");
    assert_eq!(close["code"], "TENANT_SUSPENDED");

    // Shutting down ends the streams still open, and the server, within the grace period.
    let mut open = app
        .request(Method::GET, "/v1/events/stream", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    let started = std::time::Instant::now();
    app.shutdown.cancel();
    let close = sse_until(&mut open, "close", Duration::from_secs(10))
        .await
        .expect("a close event");
    assert_eq!(close["code"], "SERVER_STOPPING");
    let server = std::mem::replace(&mut app.server, tokio::spawn(async { Ok(()) }));
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
both_backends!(
    live_streams_follow_their_credentials,
    live_streams_follow_their_credentials
);

/// The change feed, the live stream and NATS show each event only to the roles that may read
/// its aggregate, and a key's hash to no one.
async fn events_are_shown_to_the_roles_that_own_them(backend: Backend) {
    let names = Names::new();
    let app = spawn_app_with(backend, |s| names.apply(s, &nats_url())).await;
    let issue = |roles: Value| {
        let app = &app;
        async move {
            let issued = json_of(
                app.request(Method::POST, "/v1/api-keys", "acme")
                    .json(&json!({ "name": "seer", "roles": roles }))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            issued["apiKey"]["key"].as_str().unwrap().to_string()
        }
    };
    let reader = issue(json!(["reader"])).await;
    let analyst = issue(json!(["reader", "analyst"])).await;
    let budget = app
        .request(Method::PUT, "/v1/budgets/tenant", "acme")
        .json(&json!({ "monthlyLimitUsd": "10", "enforcement": "soft" }))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), 200);
    let last = app.create("acme", "tasks", json!({ "id": "last" })).await;
    assert_eq!(last.status(), 201);

    let feed = |key: String| {
        let app = &app;
        async move {
            let page = json_of(
                app.with_key(Method::GET, "/v1/events?limit=1000", &key)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            page["items"].as_array().unwrap().clone()
        }
    };
    let types = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| i["aggregateType"].as_str().unwrap().to_string())
            .collect()
    };
    // On PostgreSQL an event is in the feed once older transactions have ended.
    let admin_items = eventually(Duration::from_secs(10), || async {
        let items = feed(app.keys["acme"].clone()).await;
        items
            .iter()
            .any(|i| i["aggregateId"] == "tasks/last")
            .then_some(items)
    })
    .await;
    let admin_types = types(&admin_items);
    for expected in ["Tenant", "ApiKey", "Budget", "Entity"] {
        assert!(
            admin_types.iter().any(|t| t == expected),
            "admin sees {expected}"
        );
    }
    assert!(
        !admin_items
            .iter()
            .any(|i| i["payload"].get("secretHash").is_some()),
        "no key hash, even for admins"
    );
    let reader_types = types(&feed(reader.clone()).await);
    assert!(reader_types.iter().any(|t| t == "Entity"));
    assert!(
        reader_types
            .iter()
            .all(|t| !["Tenant", "ApiKey", "Budget"].contains(&t.as_str())),
        "{reader_types:?}"
    );
    let analyst_types = types(&feed(analyst).await);
    assert!(analyst_types.iter().any(|t| t == "Budget"));
    assert!(analyst_types.iter().all(|t| t != "ApiKey" && t != "Tenant"));

    // The live stream from the beginning, as the reader: up to the last record, nothing else.
    let mut stream = app
        .with_key(Method::GET, "/v1/events/stream?after=beginning", &reader)
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains("tasks/last") {
            let chunk = stream.chunk().await.unwrap().expect("the stream goes on");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the last record arrives");
    for line in text.lines().filter_map(|l| l.strip_prefix("data:")) {
        let envelope: Value = serde_json::from_str(line.trim()).unwrap();
        seen.push(envelope["aggregateType"].as_str().unwrap().to_string());
    }
    assert!(
        seen.iter()
            .all(|t| !["Tenant", "ApiKey", "Budget"].contains(&t.as_str())),
        "{seen:?}"
    );

    // NATS: restricted aggregates under their own prefix, and no hash anywhere.
    let messages = eventually(Duration::from_secs(15), || async {
        let messages = names.messages().await;
        messages
            .iter()
            .any(|m| m.subject.ends_with("tasks%2Flast"))
            .then_some(messages)
    })
    .await;
    let restricted = format!("{}_restricted.", names.prefix);
    let public = format!("{}.", names.prefix);
    for message in &messages {
        let envelope: Value = serde_json::from_slice(&message.payload).unwrap();
        let aggregate = envelope["aggregateType"].as_str().unwrap();
        let expected = if ["Tenant", "ApiKey", "Budget"].contains(&aggregate) {
            &restricted
        } else {
            &public
        };
        assert!(
            message.subject.starts_with(expected.as_str()),
            "{}",
            message.subject
        );
        assert!(
            envelope["payload"].get("secretHash").is_none(),
            "{}",
            message.subject
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m.subject.starts_with(restricted.as_str()))
    );
    names.delete().await;
}
both_backends!(
    events_are_shown_to_the_roles_that_own_them,
    events_are_shown_to_the_roles_that_own_them
);

async fn a_tenant_cannot_add_indexes_without_end(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.max_indexed_fields_per_tenant = 3).await;
    let define = |name: &str, fields: &[&str]| {
        let fields: serde_json::Map<String, Value> = fields
            .iter()
            .map(|f| (f.to_string(), json!({ "type": "string", "indexed": true })))
            .collect();
        let body = json!({ "name": name, "fields": fields });
        let app = &app;
        async move {
            app.request(Method::POST, "/v1/entity-types", "acme")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(define("alpha", &["a1", "a2"]).await.status(), 201);
    // The same field name and kind shares its index: no new one.
    let shared = define("beta", &["a1"]).await;
    assert_eq!(shared.status(), 201);
    let position = position(&shared);
    // Wait until the read model has both types, then go over the budget.
    let listed = app
        .request(Method::GET, "/v1/entity-types", "acme")
        .header("x-min-position", position)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(define("gamma", &["g1"]).await.status(), 201);
    let refused = define("delta", &["d1"]).await;
    assert_eq!(error_code(refused).await, (400, "VALIDATION_ERROR".into()));
    // Another tenant has a budget of its own.
    let other = app
        .request(Method::POST, "/v1/entity-types", "globex")
        .json(
            &json!({ "name": "delta", "fields": { "d1": { "type": "string", "indexed": true } } }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 201);
}
both_backends!(
    a_tenant_cannot_add_indexes_without_end,
    a_tenant_cannot_add_indexes_without_end
);

/// An idle stream moves its cursor past other tenants' events instead of scanning them again
/// on every append.
async fn an_idle_stream_moves_past_other_tenants_events(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.stream_recheck_ms = 200).await;
    let (key, id) = reader_key(&app, "idle").await;
    let mut stream = app
        .with_key(Method::GET, "/v1/events/stream", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut last = String::new();
    for i in 0..20 {
        let created = app
            .create("globex", "tasks", json!({ "id": format!("g{i}") }))
            .await;
        assert_eq!(created.status(), 201);
        last = position(&created);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.request(Method::DELETE, &format!("/v1/api-keys/{id}"), "acme")
        .send()
        .await
        .unwrap();
    let close = sse_until(&mut stream, "close", Duration::from_secs(10))
        .await
        .expect("closed");
    let cursor: eventlog::Cursor = close["cursor"].as_str().unwrap().parse().unwrap();
    let globex: eventlog::Cursor = last.parse().unwrap();
    assert!(
        cursor >= globex,
        "the stream's cursor {cursor:?} is past globex's {globex:?}"
    );
}
both_backends!(
    an_idle_stream_moves_past_other_tenants_events,
    an_idle_stream_moves_past_other_tenants_events
);

/// With PostgreSQL gone, `/ready` says so within a second and writes fail fast with 503 and
/// `Retry-After`; when it is back, everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_the_gateway_fails_fast_and_recovers() {
    let db = crate::helpers::TestDb::new(Backend::Postgres).await;
    let server = crate::servers::address_of(&db.url);
    let proxy = crate::streams::Proxy::start(server.parse().unwrap()).await;
    let url = db.url.replace(&server, &proxy.address().to_string());
    let mut app = crate::helpers::spawn_app_on(db, |s| {
        s.database_url = Some(url.clone().into());
        s.database_acquire_timeout_ms = 500;
    })
    .await;
    let log = app.db.log().await;
    app.keys.insert(
        "acme".into(),
        crate::helpers::create_tenant(&log, "acme").await,
    );
    log.db().close().await;
    assert_eq!(
        app.create("acme", "tasks", json!({ "id": "before" }))
            .await
            .status(),
        201
    );

    proxy.cut();
    let started = std::time::Instant::now();
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1_800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ready.status(), 503);
    let ready = json_of(ready).await;
    assert_eq!(ready["status"], "unavailable");
    assert!(ready["reason"].is_string(), "{ready}");

    let started = std::time::Instant::now();
    let refused = app.create("acme", "tasks", json!({ "id": "during" })).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        error_code(refused).await,
        (503, "DATABASE_UNAVAILABLE".into())
    );

    proxy.restore();
    eventually(Duration::from_secs(20), || async {
        let created = app.create("acme", "tasks", json!({ "id": "after" })).await;
        (created.status() == 201).then_some(())
    })
    .await;
    assert_eq!(app.public_json("/ready").await["status"], "ready");
}

/// Whether a record of `tasks` is in the list (the entities projection has applied it).
async fn listed(app: &TestApp, id: &str) -> bool {
    let page = json_of(
        app.request(Method::GET, "/v1/tasks?limit=100", "acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    page["items"]
        .as_array()
        .is_some_and(|items| items.iter().any(|i| i["id"] == id))
}

/// Readers wait only for transactions that can still append to this database's log: an open
/// transaction in another database of the cluster, or one of another program in the same
/// database, holds nothing back; an open gateway transaction does, until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateways_own_transactions_hold_the_readers_back() {
    use sqlx::Connection;
    let app = spawn_app_with(Backend::Postgres, |s| s.projector_poll_ms = 50).await;
    let admin = crate::servers::postgres_url();
    let hold = |url: String| async move {
        let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
        // An id assigned: the transaction counts for every cluster-wide horizon.
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut connection)
            .await
            .unwrap();
        connection
    };
    let elsewhere = hold(admin).await;
    let same_database = hold(app.db.url.clone()).await;

    let created = app
        .create("acme", "tasks", json!({ "id": "not-held" }))
        .await;
    assert_eq!(created.status(), 201);
    eventually(Duration::from_secs(10), || async {
        listed(&app, "not-held").await.then_some(())
    })
    .await;

    // A gateway transaction that has appended and not committed holds the readers back: what
    // commits after it is not read before it.
    let log = app.db.log().await;
    let mut open = log.db().begin().await.unwrap();
    let tenant = domain::names::TenantId::parse("acme").unwrap();
    let entity_type = domain::names::EntityTypeName::parse("tasks").unwrap();
    let id = domain::names::EntityId::parse("earlier").unwrap();
    let event = domain::entity::EntityEvent::EntityCreated {
        entity_type: entity_type.clone(),
        id: id.clone(),
        data: Map::new(),
    };
    log.append_in(
        &mut open,
        &[eventlog::StreamAppend {
            stream: app::entity_writes::entity_stream(&tenant, &entity_type, &id),
            expected_version: 0,
            events: vec![eventlog::NewEvent::from_domain(&event).unwrap()],
            metadata: domain::metadata::EventMetadata::new(tenant.clone(), "t", "t", "Hold"),
        }],
    )
    .await
    .unwrap();
    let later = app.create("acme", "tasks", json!({ "id": "later" })).await;
    assert_eq!(later.status(), 201);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!listed(&app, "later").await, "read past an open appender");
    open.commit().await.unwrap();
    eventually(Duration::from_secs(10), || async {
        (listed(&app, "earlier").await && listed(&app, "later").await).then_some(())
    })
    .await;
    drop((elsewhere, same_database));
    log.db().close().await;
}
