//! Property tests (proptest) of what tenants send most: documents into record commands, merge
//! patches, and `where` filters. Whatever the input, the answer is never a 5xx; a record
//! accepted reads back exactly as sent, and a patch accepted reads back as the merge patch of
//! the two. `PROPTEST_CASES` sets the cases per property (default 40 on each backend); a
//! failure prints the smallest input proptest found.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::{Map, Value};

use crate::helpers::{Backend, TestApp, spawn_app_with};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_ -]{0,12}",
        2 => any::<String>().prop_map(|s| s.chars().take(16).collect()),
        1 => Just("\u{0}".to_string()),
        1 => Just("\u{202e}é🦀".to_string()),
        1 => Just("=cmd|".to_string()),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn document() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(text(), json(), 0..8).prop_map(|m| m.into_iter().collect())
}

static NEXT: AtomicU64 = AtomicU64::new(0);

async fn send(app: &TestApp, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut request = app.request(method, path, "acme");
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let position = response
        .headers()
        .get("x-event-position")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut value: Value = response.json().await.unwrap_or(Value::Null);
    if let Some(position) = position {
        value["__position"] = position.into();
    }
    (status, value)
}

async fn read(app: &TestApp, id: &str, position: &Value) -> Value {
    let response = app
        .request(Method::GET, &format!("/v1/tasks/{id}"), "acme")
        .header("x-min-position", position.as_str().unwrap_or_default())
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

/// Documents, patches and filters, on one backend.
fn properties(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(spawn_app_with(backend, |_| {}));
    let mut runner = TestRunner::new(Config {
        // The seed of a failure is printed with it; nothing is written next to the sources.
        failure_persistence: None,
        ..Config::with_cases(cases())
    });

    runner
        .run(&(document(), document()), |(doc, patch)| {
            runtime.block_on(async {
                let id = format!("fz{}", NEXT.fetch_add(1, Ordering::Relaxed));
                let mut body = doc.clone();
                body.insert("id".into(), Value::from(id.clone()));
                let (status, created) =
                    send(&app, Method::POST, "/v1/tasks", Some(&Value::Object(body))).await;
                prop_assert!(status < 500, "create answered {status}: {created}");
                if status != 201 {
                    return Ok(());
                }
                let mut written = doc.clone();
                written.remove("id");
                let stored = read(&app, &id, &created["__position"]).await;
                prop_assert_eq!(&stored["data"], &Value::Object(written.clone()));

                let (status, patched) = send(
                    &app,
                    Method::PATCH,
                    &format!("/v1/tasks/{id}"),
                    Some(&Value::Object(patch.clone())),
                )
                .await;
                prop_assert!(status < 500, "patch answered {status}: {patched}");
                if status == 200 {
                    let mut expected = Value::Object(written);
                    json_merge_patch(&mut expected, &Value::Object(patch));
                    if let Value::Object(map) = &mut expected {
                        map.remove("id");
                    }
                    let stored = read(&app, &id, &patched["__position"]).await;
                    prop_assert_eq!(&stored["data"], &expected);
                }
                Ok(())
            })
        })
        .unwrap();

    runner
        .run(&json(), |filter| {
            runtime.block_on(async {
                let response = app
                    .request(Method::GET, "/v1/tasks", "acme")
                    .query(&[("where", filter.to_string())])
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                prop_assert!(
                    status == 200 || (400..500).contains(&status),
                    "where {filter} answered {status}"
                );
                Ok(())
            })
        })
        .unwrap();
    runtime.block_on(async move { drop(app) });
}

/// RFC 7396, as the gateway documents it for `PATCH`.
fn json_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            json_merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[test]
fn documents_patches_and_filters_never_fail_the_server_sqlite() {
    properties(Backend::Sqlite);
}

#[test]
fn documents_patches_and_filters_never_fail_the_server_postgres() {
    properties(Backend::Postgres);
}
