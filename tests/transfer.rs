//! `gateway log export` and `gateway log import`: a populated SQLite gateway moved to
//! PostgreSQL answers every read as before, with its keys and idempotency records; truncated,
//! tampered and misplaced files are refused whole.

use std::time::Duration;

use clap::Parser;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, TestApp, TestDb, create_agent, create_session, define_types, eventually, json_of,
    quick, send, spawn_app_on, spawn_app_with,
};

/// Runs `gateway <args>` on `db`; what it printed.
async fn gateway(db: &TestDb, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let cli = cli::Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    cli::run(cli, db.settings(), &mut out).await?;
    Ok(out)
}

/// `gateway log import` on `db`, reading `file`; what it printed, as JSON lines.
async fn import(db: &TestDb, file: &[u8], republish: bool) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut input = file;
    cli::log::import(&db.settings(), &mut input, republish, &mut out).await?;
    Ok(out
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect())
}

/// Waits until every projector has applied every event committed so far.
async fn projected(db: &TestDb) {
    let log = db.log().await;
    let newest = log.last_committed().await.unwrap();
    eventually(Duration::from_secs(30), || async {
        for projector in projections::all() {
            let at = projections::checkpoints::read(log.db(), projector.name())
                .await
                .ok()??;
            if at < newest {
                return None;
            }
        }
        Some(())
    })
    .await;
    log.db().close().await;
}

async fn count_events(db: &TestDb) -> u64 {
    let log = db.log().await;
    let (count, _) = log.backlog(eventlog::Cursor::START).await.unwrap();
    log.db().close().await;
    count
}

/// `value` without its log positions: the new database numbers the same events anew.
fn without_cursors(value: &Value) -> Value {
    match value {
        Value::Object(fields) => fields
            .iter()
            .filter(|(name, _)| name.as_str() != "cursor")
            .map(|(name, field)| (name.clone(), without_cursors(field)))
            .collect(),
        Value::Array(items) => items.iter().map(without_cursors).collect(),
        other => other.clone(),
    }
}

async fn get(app: &TestApp, key: &str, path: &str) -> Value {
    let response = app.with_key(Method::GET, path, key).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    json_of(response).await
}

/// Everything a client can read of acme's and globex's data, and the platform's tenants.
async fn everything(app: &TestApp, acme: &str, globex: &str, sessions: &[String]) -> Vec<Value> {
    let today = chrono::Utc::now().date_naive();
    let range = format!(
        "from={}&to={}",
        today - chrono::Duration::days(3),
        today + chrono::Duration::days(3)
    );
    let mut paths = vec![
        "/v1/me".to_string(),
        "/v1/agents".to_string(),
        "/v1/sessions".to_string(),
        "/v1/api-keys".to_string(),
        "/v1/budgets".to_string(),
        "/v1/entity-types".to_string(),
        "/v1/users".to_string(),
        "/v1/users/ada".to_string(),
        "/v1/users/ada/history".to_string(),
        "/v1/teams/core/relations/members".to_string(),
        "/v1/users/ada/incoming/teams/members".to_string(),
        format!("/v1/usage/rollup?{range}"),
        format!(
            "/v1/usage/query?from={}T00:00:00Z&to={}T00:00:00Z&windowSize=DAY&groupBy=provider,agentId",
            today - chrono::Duration::days(3),
            today + chrono::Duration::days(3)
        ),
        format!("/v1/usage/events?{range}"),
    ];
    for session in sessions {
        paths.push(format!("/v1/sessions/{session}"));
        paths.push(format!("/v1/sessions/{session}/transcript"));
        paths.push(format!("/v1/sessions/{session}/provider-calls"));
    }
    let mut answers = Vec::new();
    for path in &paths {
        answers.push(json!({"path": path, "acme": get(app, acme, path).await}));
    }
    answers.push(json!({"globex": get(app, globex, "/v1/agents").await}));
    answers.push(json!({"tenants": json_of(
        app.as_admin(Method::GET, "/v1/tenants").send().await.unwrap()
    ).await}));
    answers
}

#[tokio::test]
async fn a_sqlite_gateway_moves_to_postgres_with_its_keys_and_idempotency_records() {
    // A SQLite gateway with agents, sessions, billed replies, a budget, a new key, records of
    // a type with a relation, an update and a deletion.
    let source = spawn_app_with(Backend::Sqlite, quick).await;
    let (acme, globex) = (source.keys["acme"].clone(), source.keys["globex"].clone());
    let types = [
        json!({"name": "people-extra", "fields": {"name": {"type": "string"}}}),
        json!({"name": "teams", "fields": {"name": {"type": "string"}},
               "relations": {"members": {"to": "users"}}}),
    ];
    define_types(&source, "acme", &types).await;
    for (id, name) in [("ada", "Ada"), ("grace", "Grace"), ("gone", "Gone")] {
        let response = source
            .create("acme", "users", json!({"id": id, "name": name}))
            .await;
        assert_eq!(response.status(), 201);
    }
    let response = source
        .create("acme", "teams", json!({"id": "core", "name": "Core"}))
        .await;
    assert_eq!(response.status(), 201);
    let linked = source
        .request(Method::PUT, "/v1/teams/core/relations/members/ada", "acme")
        .send()
        .await
        .unwrap();
    assert!(linked.status().is_success(), "{}", linked.status());
    let patched = source
        .request(Method::PATCH, "/v1/users/ada", "acme")
        .json(&json!({"name": "Ada Lovelace"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let deleted = source
        .request(Method::DELETE, "/v1/users/gone", "acme")
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());

    let body =
        json!({"name": "Support", "primaryProvider": "vendorA", "fallbackProvider": "vendorB"});
    let support = create_agent(&source, "acme", body).await;
    let body =
        json!({"name": "Globex bot", "primaryProvider": "vendorB", "fallbackProvider": "vendorA"});
    let globex_agent = create_agent(&source, "globex", body).await;
    let sessions = vec![
        create_session(&source, "acme", &support).await,
        create_session(&source, "acme", &support).await,
    ];
    let globex_session = create_session(&source, "globex", &globex_agent).await;
    let first = send(&source, "acme", &sessions[0], "move-1", "Hello").await;
    assert_eq!(first.status(), 201);
    let first = json_of(first).await;
    assert_eq!(
        send(&source, "acme", &sessions[1], "move-2", "Invoice?")
            .await
            .status(),
        201
    );
    assert_eq!(
        send(&source, "globex", &globex_session, "move-3", "Hi")
            .await
            .status(),
        201
    );
    let budget = source
        .request(Method::PUT, "/v1/budgets/tenant", "acme")
        .json(&json!({"monthlyLimitUsd": "100", "enforcement": "soft"}))
        .send()
        .await
        .unwrap();
    assert!(budget.status().is_success());
    let issued = source
        .request(Method::POST, "/v1/api-keys", "acme")
        .json(&json!({"name": "analyst", "roles": ["analyst", "reader"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    let analyst = json_of(issued).await["apiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    projected(&source.db).await;
    let before = everything(&source, &acme, &globex, &sessions).await;

    // Export the whole log; the file is JSON lines ending in its end line.
    let file = gateway(&source.db, &["log", "export"]).await.unwrap();
    let lines: Vec<Value> = file
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect();
    assert_eq!(lines[0]["kind"], "header");
    assert_eq!(lines[0]["backend"], "sqlite");
    let end = lines.last().unwrap();
    assert_eq!(end["kind"], "end");
    let events = count_events(&source.db).await;
    assert_eq!(end["events"], events);
    assert!(end["idempotencyRecords"].as_u64().unwrap() >= 3, "{end}");

    // Into PostgreSQL: every event with its id, stream, version and time.
    let target = TestDb::new(Backend::Postgres).await;
    let printed = import(&target, &file, false).await.unwrap();
    assert_eq!(printed[0]["imported"]["events"], events);
    assert_eq!(
        printed.len(),
        1 + projections::all().len(),
        "one line per rebuilt projector"
    );
    let (from, to) = (source.db.log().await, target.log().await);
    let mut cursor = (eventlog::Cursor::START, eventlog::Cursor::START);
    loop {
        let a = from.read_stored_after(cursor.0, 100).await.unwrap();
        let b = to.read_stored_after(cursor.1, 100).await.unwrap();
        assert_eq!(a.len(), b.len());
        let Some((last_a, last_b)) = a.last().zip(b.last()) else {
            break;
        };
        cursor = (last_a.cursor, last_b.cursor);
        for (a, b) in a.into_iter().zip(b) {
            assert_eq!(
                (a.event_id, &a.tenant_id, &a.aggregate_type, &a.aggregate_id),
                (b.event_id, &b.tenant_id, &b.aggregate_type, &b.aggregate_id)
            );
            assert_eq!(
                (a.sequence, &a.event_type, &a.event_version, a.recorded_at),
                (b.sequence, &b.event_type, &b.event_version, b.recorded_at)
            );
            assert_eq!((&a.payload, &a.metadata), (&b.payload, &b.metadata));
        }
    }
    // The relay starts after the imported events: they were published when written.
    let relay = projections::checkpoints::read(to.db(), workers::relay::CHECKPOINT)
        .await
        .unwrap();
    assert_eq!(relay, Some(to.last_committed().await.unwrap()));
    let report = projections::usage::verify(&to, 100).await.unwrap();
    assert_eq!(report.mismatches, Vec::new());
    from.db().close().await;
    to.db().close().await;

    // The moved gateway answers every read as the old one did, to the old keys.
    let mut moved = spawn_app_on(target, quick).await;
    moved.keys = source.keys.clone();
    let after = everything(&moved, &acme, &globex, &sessions).await;
    for (before, after) in before.iter().zip(&after) {
        assert_eq!(without_cursors(before), without_cursors(after));
    }
    let me = get(&moved, &analyst, "/v1/me").await;
    assert_eq!(me["tenant"]["id"], "acme", "{me}");
    // A retried message is answered from its record, not sent and billed again.
    let replay = send(&moved, "acme", &sessions[0], "move-1", "Hello").await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    let replay = json_of(replay).await;
    assert_eq!(replay["metadata"]["idempotency"]["replayed"], true);
    assert_eq!(replay["message"], first["message"]);
    assert_eq!(replay["metadata"]["usage"], first["metadata"]["usage"]);
    assert_eq!(count_events(&moved.db).await, events);
    // And the gateway goes on writing where the log left off.
    let next = send(&moved, "acme", &sessions[0], "move-4", "Thanks").await;
    assert_eq!(next.status(), 201);
    moved.shutdown.cancel();
    source.shutdown.cancel();
}

/// A copy of `file` whose lines are passed through `edit`.
fn edited(file: &[u8], mut edit: impl FnMut(usize, Value) -> Option<Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, line) in file
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if let Some(value) = edit(index, serde_json::from_slice(line).unwrap()) {
            out.extend(serde_json::to_vec(&value).unwrap());
            out.push(b'\n');
        }
    }
    out
}

#[tokio::test]
async fn imports_refuse_bad_files_whole_and_take_incremental_backups() {
    let source = spawn_app_with(Backend::Sqlite, quick).await;
    for id in ["a", "b"] {
        let response = source.create("acme", "users", json!({"id": id})).await;
        assert_eq!(response.status(), 201);
    }
    let full = gateway(&source.db, &["log", "export"]).await.unwrap();
    let last = |file: &[u8]| -> String {
        let text = std::str::from_utf8(file).unwrap();
        let end: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        end["lastCursor"].as_str().unwrap().to_string()
    };
    let events = full
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;

    let target = TestDb::new(Backend::Sqlite).await;
    let lines = full.split(|b| *b == b'\n').count();
    let refusals: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        (
            "truncated",
            edited(&full, |i, v| (i + 2 < lines).then_some(v)),
        ),
        ("no header", edited(&full, |i, v| (i > 0).then_some(v))),
        ("not JSON", b"{\"kind\": \"header\"\n".to_vec()),
        ("a gap in a stream", {
            let mut done = false;
            edited(&full, |_, mut v| {
                if v["kind"] == "event" && !done {
                    v["sequence"] = json!(2);
                    done = true;
                }
                Some(v)
            })
        }),
        (
            "a bad tenant",
            edited(&full, |_, mut v| {
                if v["kind"] == "event" {
                    v["tenantId"] = json!("no/such tenant");
                }
                Some(v)
            }),
        ),
        (
            "counts that disagree",
            edited(&full, |_, mut v| {
                if v["kind"] == "end" {
                    v["events"] = json!(1);
                }
                Some(v)
            }),
        ),
        (
            "another format",
            edited(&full, |_, mut v| {
                if v["kind"] == "header" {
                    v["version"] = json!(99);
                }
                Some(v)
            }),
        ),
        ("a line too deep", {
            let marked = edited(&full, |_, mut v| {
                if v["kind"] == "event" {
                    v["payload"] = json!("DEEP");
                }
                Some(v)
            });
            let deep = format!("{}1{}", "[".repeat(2_000), "]".repeat(2_000));
            String::from_utf8(marked)
                .unwrap()
                .replace("\"DEEP\"", &deep)
                .into_bytes()
        }),
    ];
    for (what, file) in refusals {
        let error = import(&target, &file, false).await.expect_err(what);
        assert!(!error.to_string().is_empty(), "{what}");
        assert_eq!(count_events(&target).await, 0, "{what} left events behind");
    }

    // A whole-log file into the same database twice: the second is refused.
    import(&target, &full, false).await.unwrap();
    let error = import(&target, &full, false).await.unwrap_err();
    assert!(error.to_string().contains("empty database"), "{error}");

    // An incremental export continues the log it was cut from.
    for id in ["c", "d"] {
        let response = source.create("acme", "users", json!({"id": id})).await;
        assert_eq!(response.status(), 201);
    }
    let since = last(&full);
    let increment = gateway(&source.db, &["log", "export", "--from", &since])
        .await
        .unwrap();
    let header: Value =
        serde_json::from_slice(increment.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(header["from"], since.as_str());
    import(&target, &increment, false).await.unwrap();
    // Loading it twice would write its events twice: refused.
    assert!(import(&target, &increment, false).await.is_err());
    assert_eq!(
        count_events(&target).await,
        count_events(&source.db).await,
        "{events} lines in the first file"
    );
    let moved = spawn_app_on(target, quick).await;
    let users = json_of(
        moved
            .with_key(Method::GET, "/v1/users", &source.keys["acme"])
            .send()
            .await
            .unwrap(),
    )
    .await;
    let ids: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    moved.shutdown.cancel();
    source.shutdown.cancel();
}
