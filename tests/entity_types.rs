//! Tenant-defined entity types, black-box over HTTP: schemas and their changes, validation,
//! composite keys, unique fields under racing writers, every filter operator, keyset pages
//! while writes happen, `_transact`, references, history and the change feed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, error_code, eventually, not_found, spawn_app};

/// The position of the last write each app answered, for read-your-writes. (The change feed
/// is not used for this: on PostgreSQL it shows a commit only once every older transaction of
/// the cluster has ended.)
static LAST_POSITION: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn remember(app: &TestApp, response: &reqwest::Response) {
    if let Some(position) = response.headers().get("x-event-position") {
        LAST_POSITION
            .lock()
            .unwrap()
            .insert(app.address.clone(), position.to_str().unwrap().to_string());
    }
}

/// Sends `method path` with `body` as the admin of `acme`.
async fn send(app: &TestApp, method: Method, path: &str, body: Value) -> reqwest::Response {
    let response = app
        .request(method, path, "acme")
        .json(&body)
        .send()
        .await
        .unwrap();
    remember(app, &response);
    response
}

async fn define(app: &TestApp, body: Value) -> Value {
    let response = send(app, Method::POST, "/v1/entity-types", body).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

async fn create(app: &TestApp, entity: &str, body: Value) -> reqwest::Response {
    send(app, Method::POST, &format!("/v1/{entity}"), body).await
}

async fn created(app: &TestApp, entity: &str, body: Value) -> Value {
    let response = create(app, entity, body).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// The position of the last write, for read-your-writes after several writes.
async fn head(app: &TestApp) -> String {
    LAST_POSITION.lock().unwrap()[&app.address].clone()
}

/// `GET /v1/{entity}` with query parameters, after every write so far has been projected.
async fn list(app: &TestApp, entity: &str, query: &[(&str, &str)]) -> reqwest::Response {
    let at = head(app).await;
    app.request(Method::GET, &format!("/v1/{entity}"), "acme")
        .query(query)
        .header("x-min-position", at)
        .send()
        .await
        .unwrap()
}

async fn ids(app: &TestApp, entity: &str, filter: Value) -> BTreeSet<String> {
    let response = list(
        app,
        entity,
        &[("where", &filter.to_string()), ("limit", "500")],
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "{filter}: {:?}",
        response.text().await
    );
    let body: Value = response.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect()
}

/// The `indexes` of the entity type that `get` reads, once every one of them is `ready`.
async fn ready_indexes(get: impl Fn() -> reqwest::RequestBuilder) -> Vec<Value> {
    eventually(Duration::from_secs(60), || async {
        let entity_type: Value = get().send().await.ok()?.json().await.ok()?;
        let indexes = entity_type["indexes"].as_array()?.clone();
        indexes
            .iter()
            .all(|index| index["status"] == "ready")
            .then_some(indexes)
    })
    .await
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn types_are_defined_validated_and_changed_compatibly(backend: Backend) {
    let app = spawn_app(backend).await;
    let customers = define(
        &app,
        json!({"name": "customers", "fields": {
            "email": {"type": "string", "required": true, "maxLength": 40, "unique": true},
            "plan": {"type": "string", "enum": ["free", "pro"]},
            "seats": {"type": "integer"},
            "since": {"type": "timestamp"}
        }}),
    )
    .await;
    assert_eq!(customers["version"], 1);
    assert_eq!(customers["schema"]["fields"]["email"]["unique"], true);

    // Names of built-in resources are reserved; malformed names and schemas are refused.
    for name in ["agents", "entity-types", "events", "usage", "api-keys"] {
        let response = send(
            &app,
            Method::POST,
            "/v1/entity-types",
            json!({"name": name}),
        )
        .await;
        assert_eq!(
            error_code(response).await,
            (400, "INVALID_ENTITY_TYPE".into()),
            "{name}"
        );
    }
    let response = send(
        &app,
        Method::POST,
        "/v1/entity-types",
        json!({"name": "bad", "key": ["nope"], "fields": {"x": {"type": "json", "indexed": true}}}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(
        body["error"]["details"]["fields"].as_array().unwrap().len(),
        2
    );
    let again = send(
        &app,
        Method::POST,
        "/v1/entity-types",
        json!({"name": "customers"}),
    )
    .await;
    assert_eq!(
        error_code(again).await,
        (409, "ENTITY_TYPE_ALREADY_EXISTS".into())
    );

    // The type reads back at once from the log, and in the list through the read model.
    let read: Value = app
        .request(Method::GET, "/v1/entity-types/customers", "acme")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["schema"], customers["schema"]);
    let at = head(&app).await;
    let listed: Value = app
        .request(Method::GET, "/v1/entity-types", "acme")
        .header("x-min-position", at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"customers") && names.contains(&"users"),
        "{names:?}"
    );
    let missing = app
        .request(Method::GET, "/v1/entity-types/nope", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(missing).await, "entityType");

    // Writing to an unknown type, and each invalid field named once.
    let unknown = create(&app, "widgets", json!({"a": 1})).await;
    assert_eq!(not_found(unknown).await, "entityType");
    let listed_unknown = app
        .request(Method::GET, "/v1/widgets", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(listed_unknown).await, "entityType");
    let invalid = create(
        &app,
        "customers",
        json!({"plan": "gold", "seats": 1.5, "since": "yesterday", "extra": true}),
    )
    .await;
    assert_eq!(invalid.status(), 400);
    let body: Value = invalid.json().await.unwrap();
    let fields: BTreeSet<&str> = body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["email", "plan", "seats", "since", "extra"]
            .into_iter()
            .collect()
    );
    let ok = created(
        &app,
        "customers",
        json!({"id": "c1", "email": "a@x.io", "since": "2026-03-01T10:00:00+01:00"}),
    )
    .await;
    assert_eq!(ok["data"]["since"], "2026-03-01T09:00:00.000000Z");

    // A body that is not an object is no schema (serde alone would read `[]` as an empty one).
    for body in [json!([]), json!([false, {}]), json!("fields"), json!(null)] {
        let refused = app
            .request(Method::PATCH, "/v1/entity-types/customers", "acme")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            crate::helpers::error_code(refused).await,
            (400, "VALIDATION_ERROR".into()),
            "{body}"
        );
    }

    // A compatible change (a new optional field) is accepted, with If-Match.
    let mut fields = customers["schema"]["fields"].clone();
    fields["nickname"] = json!({"type": "string"});
    let changed = app
        .request(Method::PATCH, "/v1/entity-types/customers", "acme")
        .header("if-match", "\"1\"")
        .json(&json!({"fields": fields}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["version"], 2);
    created(
        &app,
        "customers",
        json!({"email": "b@x.io", "nickname": "bee"}),
    )
    .await;

    // Incompatible changes are refused, each named.
    let mut incompatible = fields.clone();
    incompatible["seats"] = json!({"type": "string"});
    incompatible["tier"] = json!({"type": "string", "required": true});
    incompatible.as_object_mut().unwrap().remove("plan");
    let refused = send(
        &app,
        Method::PATCH,
        "/v1/entity-types/customers",
        json!({"fields": incompatible}),
    )
    .await;
    assert_eq!(refused.status(), 409);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INCOMPATIBLE_SCHEMA_CHANGE");
    let fields: BTreeSet<&str> = body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["fields.plan", "fields.seats.type", "fields.tier.required"]
            .into_iter()
            .collect()
    );
    let stale = app
        .request(Method::PATCH, "/v1/entity-types/customers", "acme")
        .header("if-match", "\"1\"")
        .json(&json!({"fields": changed["schema"]["fields"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(stale).await, (409, "VERSION_CONFLICT".into()));

    // Types are per tenant.
    let other = app
        .request(Method::POST, "/v1/customers", "globex")
        .json(&json!({"email": "a@x.io"}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(other).await, "entityType");
}
both_backends!(
    types_are_defined_validated_and_changed,
    types_are_defined_validated_and_changed_compatibly
);

async fn composite_keys_put_and_the_seed_examples(backend: Backend) {
    let app = spawn_app(backend).await;
    define(
        &app,
        json!({"name": "agent-shared-states", "key": ["agentName", "userId", "convId"], "fields": {
            "agentName": {"type": "string", "required": true},
            "userId": {"type": "string", "required": true},
            "convId": {"type": "string", "required": true},
            "state": {"type": "json"}
        }}),
    )
    .await;
    let state = created(
        &app,
        "agent-shared-states",
        json!({"agentName": "agent-name", "userId": "user-1", "convId": "conv-1", "state": {"step": 1}}),
    )
    .await;
    assert_eq!(state["id"], "agent-name:user-1:conv-1");
    let read = app
        .request(
            Method::GET,
            "/v1/agent-shared-states/agent-name:user-1:conv-1",
            "acme",
        )
        .header("x-min-position", head(&app).await)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let twice = create(
        &app,
        "agent-shared-states",
        json!({"agentName": "agent-name", "userId": "user-1", "convId": "conv-1"}),
    )
    .await;
    assert_eq!(
        error_code(twice).await,
        (409, "ENTITY_ALREADY_EXISTS".into())
    );
    let colon = create(
        &app,
        "agent-shared-states",
        json!({"agentName": "a:b", "userId": "u", "convId": "c"}),
    )
    .await;
    assert_eq!(error_code(colon).await, (400, "VALIDATION_ERROR".into()));
    let rekey = send(
        &app,
        Method::PATCH,
        "/v1/agent-shared-states/agent-name:user-1:conv-1",
        json!({"userId": "user-2"}),
    )
    .await;
    assert_eq!(error_code(rekey).await, (400, "VALIDATION_ERROR".into()));

    // PUT replaces the document; If-Match guards it.
    let replaced = app
        .request(Method::PUT, "/v1/agent-shared-states/agent-name:user-1:conv-1", "acme")
        .header("if-match", "\"1\"")
        .json(&json!({"agentName": "agent-name", "userId": "user-1", "convId": "conv-1", "state": {"step": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    assert_eq!(replaced.headers()["etag"], "\"2\"");
    let body: Value = replaced.json().await.unwrap();
    assert_eq!(body["data"]["state"], json!({"step": 2}));
    let stale = app
        .request(
            Method::PUT,
            "/v1/agent-shared-states/agent-name:user-1:conv-1",
            "acme",
        )
        .header("if-match", "\"1\"")
        .json(&json!({"agentName": "agent-name", "userId": "user-1", "convId": "conv-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(stale).await, (409, "VERSION_CONFLICT".into()));

    // Seed 000: a user created with an Idempotency-Key, replayed, then found with `where`.
    let body = json!({"userId": "user-001", "displayName": "Agent User", "tenantId": "acme"});
    let first = app
        .request(Method::POST, "/v1/users", "acme")
        .header("idempotency-key", "create-user-001")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let replay = app
        .request(Method::POST, "/v1/users", "acme")
        .header("idempotency-key", "create-user-001")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["id"], first["id"]);
    created(&app, "users", json!({"userId": "user-002"})).await;
    assert_eq!(
        ids(&app, "users", json!({"userId": "user-001"})).await,
        set(&[first["id"].as_str().unwrap()])
    );
}
both_backends!(
    composite_keys_put_and_seed_examples,
    composite_keys_put_and_the_seed_examples
);

async fn fifty_racing_creates_of_one_unique_value_make_one_record(backend: Backend) {
    let app = spawn_app(backend).await;
    define(
        &app,
        json!({"name": "accounts", "fields": {"email": {"type": "string", "unique": true}, "n": {"type": "integer"}}}),
    )
    .await;
    let racers = (0..50).map(|n| {
        let app = &app;
        async move { create(app, "accounts", json!({"email": "same@x.io", "n": n})).await }
    });
    let responses = futures::future::join_all(racers).await;
    let mut winners = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => winners += 1,
            _ => assert_eq!(error_code(response).await, (409, "UNIQUE_VIOLATION".into())),
        }
    }
    assert_eq!(winners, 1);
    let holders = ids(&app, "accounts", json!({"email": "same@x.io"})).await;
    assert_eq!(holders.len(), 1);
    let holder = holders.into_iter().next().unwrap();

    // Taking the value by update is refused; freeing it (change, then delete) frees it.
    created(
        &app,
        "accounts",
        json!({"id": "other", "email": "other@x.io"}),
    )
    .await;
    let taken = send(
        &app,
        Method::PATCH,
        "/v1/accounts/other",
        json!({"email": "same@x.io"}),
    )
    .await;
    let (status, code) = error_code(taken).await;
    assert_eq!((status, code.as_str()), (409, "UNIQUE_VIOLATION"));
    let moved = send(
        &app,
        Method::PATCH,
        &format!("/v1/accounts/{holder}"),
        json!({"email": "new@x.io"}),
    )
    .await;
    assert_eq!(moved.status(), 200);
    let took = send(
        &app,
        Method::PATCH,
        "/v1/accounts/other",
        json!({"email": "same@x.io"}),
    )
    .await;
    assert_eq!(took.status(), 200);
    let gone = send(&app, Method::DELETE, "/v1/accounts/other", Value::Null).await;
    assert_eq!(gone.status(), 200);
    created(&app, "accounts", json!({"email": "same@x.io"})).await;
}
both_backends!(
    fifty_racing_creates_of_one_unique_value,
    fifty_racing_creates_of_one_unique_value_make_one_record
);

async fn every_filter_operator_on_fields_and_paths(backend: Backend) {
    let app = spawn_app(backend).await;
    define(
        &app,
        json!({"name": "people", "fields": {
            "name": {"type": "string", "indexed": true},
            "age": {"type": "integer", "indexed": true},
            "score": {"type": "number"},
            "active": {"type": "boolean"},
            "joined": {"type": "timestamp", "indexed": true},
            "meta": {"type": "json"}
        }}),
    )
    .await;
    let people = [
        json!({"id": "p1", "name": "Ada", "age": 36, "score": 9.5, "active": true, "joined": "2026-01-01T00:00:00Z", "meta": {"city": "London", "tags": ["math"]}}),
        json!({"id": "p2", "name": "Alan", "age": 41, "score": 8.0, "active": false, "joined": "2026-02-01T00:00:00Z", "meta": {"city": "Manchester"}}),
        json!({"id": "p3", "name": "Grace", "age": 85, "score": 7.25, "active": true, "joined": "2026-03-01T00:00:00Z", "meta": {"city": "New York", "level": 3}}),
        json!({"id": "p4", "name": "Linus", "age": 28, "active": false, "meta": {"city": "Helsinki", "level": 1}}),
        json!({"id": "p5", "name": "Barbara", "score": 6.0}),
        json!({"id": "p6", "name": "O'Brien'; DROP TABLE entities; --", "age": 50}),
    ];
    for person in people {
        created(&app, "people", person).await;
    }
    let cases = [
        (json!({"name": "Ada"}), vec!["p1"]),
        (json!({"name": {"eq": "Ada"}}), vec!["p1"]),
        (
            json!({"name": {"ne": "Ada"}}),
            vec!["p2", "p3", "p4", "p5", "p6"],
        ),
        (json!({"age": {"gt": 41}}), vec!["p3", "p6"]),
        (json!({"age": {"gte": 41}}), vec!["p2", "p3", "p6"]),
        (json!({"age": {"lt": 36}}), vec!["p4"]),
        (json!({"age": {"lte": 36}}), vec!["p1", "p4"]),
        (json!({"age": {"gt": 30, "lt": 50}}), vec!["p1", "p2"]),
        (json!({"score": {"gte": 7.25}}), vec!["p1", "p2", "p3"]),
        (json!({"active": true}), vec!["p1", "p3"]),
        (
            json!({"active": {"ne": true}}),
            vec!["p2", "p4", "p5", "p6"],
        ),
        (
            json!({"name": {"in": ["Ada", "Linus", "Nobody"]}}),
            vec!["p1", "p4"],
        ),
        (
            json!({"age": {"nin": [36, 41]}}),
            vec!["p3", "p4", "p5", "p6"],
        ),
        (json!({"name": {"contains": "ar"}}), vec!["p5"]),
        (
            json!({"name": {"contains": "a"}}),
            vec!["p1", "p2", "p3", "p5"],
        ),
        (json!({"name": {"contains": "A"}}), vec!["p1", "p2", "p6"]),
        (json!({"name": {"startsWith": "A"}}), vec!["p1", "p2"]),
        (
            json!({"name": {"startsWith": "O'Brien'; DROP"}}),
            vec!["p6"],
        ),
        (json!({"age": {"isNull": true}}), vec!["p5"]),
        (
            json!({"score": {"isNull": false}}),
            vec!["p1", "p2", "p3", "p5"],
        ),
        (json!({"score": null}), vec!["p4", "p6"]),
        (
            json!({"joined": {"gte": "2026-02-01T01:00:00+01:00"}}),
            vec!["p2", "p3"],
        ),
        (json!({"meta.city": "London"}), vec!["p1"]),
        (json!({"meta": {"city": {"startsWith": "M"}}}), vec!["p2"]),
        (json!({"meta.level": {"gte": 2}}), vec!["p3"]),
        (json!({"meta.tags.0": "math"}), vec!["p1"]),
        (
            json!({"meta.level": {"isNull": true}}),
            vec!["p1", "p2", "p5", "p6"],
        ),
        (
            json!({"or": [{"name": "Ada"}, {"age": {"gt": 80}}]}),
            vec!["p1", "p3"],
        ),
        (
            json!({"and": [{"active": true}, {"age": {"lt": 50}}]}),
            vec!["p1"],
        ),
        (
            json!({"not": {"active": true}}),
            vec!["p2", "p4", "p5", "p6"],
        ),
        (
            json!({"not": {"or": [{"age": {"lt": 40}}, {"age": {"isNull": true}}]}}),
            vec!["p2", "p3", "p6"],
        ),
        (json!({"id": {"in": ["p2", "p4"]}}), vec!["p2", "p4"]),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            ids(&app, "people", filter.clone()).await,
            set(&expected),
            "{filter}"
        );
    }

    // Malformed filters name the parameter.
    for bad in [
        "{not json",
        r#"{"nope": 1}"#,
        r#"{"age": "old"}"#,
        r#"{"age": {"between": [1, 2]}}"#,
        r#"{"name": {"in": []}}"#,
    ] {
        let response = list(&app, "people", &[("where", bad)]).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "INVALID_PARAMETER");
        assert_eq!(body["error"]["details"]["parameter"], "where");
    }
    for (name, value) in [
        ("orderBy", "meta:asc"),
        ("orderBy", "age:up"),
        ("count", "approx"),
        ("limit", "501"),
        ("cursor", "%%%"),
    ] {
        let response = list(&app, "people", &[(name, value)]).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (status, body["error"]["details"]["parameter"].as_str()),
            (400, Some(name)),
            "{name}={value}"
        );
    }
}
both_backends!(
    every_filter_operator,
    every_filter_operator_on_fields_and_paths
);

async fn keyset_pages_stay_consistent_while_writes_happen(backend: Backend) {
    let app = spawn_app(backend).await;
    define(
        &app,
        json!({"name": "scores", "fields": {"points": {"type": "integer", "indexed": true}, "team": {"type": "string"}}}),
    )
    .await;
    // Some share a value, some have none: ties and NULLs both cross page boundaries.
    let mut original = HashSet::new();
    let batch: Vec<Value> = (0..60)
        .map(|i| {
            let id = format!("s{i:02}");
            original.insert(id.clone());
            let mut data = json!({"op": "create", "entity": "scores", "id": id, "data": {"team": if i % 2 == 0 { "red" } else { "blue" }}});
            if i % 7 != 0 {
                data["data"]["points"] = json!(i % 10);
            }
            data
        })
        .collect();
    let response = send(
        &app,
        Method::POST,
        "/v1/_transact",
        json!({"operations": batch}),
    )
    .await;
    assert_eq!(response.status(), 200);

    let first = list(
        &app,
        "scores",
        &[
            ("orderBy", "points:desc"),
            ("limit", "7"),
            ("count", "exact"),
            ("where", r#"{"team": {"in": ["red", "blue"]}}"#),
        ],
    )
    .await;
    let mut page: Value = first.json().await.unwrap();
    assert_eq!(page["total"], 60);
    let mut seen = Vec::new();
    let mut last_points: Option<i64> = Some(i64::MAX);
    let mut round = 0;
    loop {
        for item in page["items"].as_array().unwrap() {
            let points = item["data"]["points"].as_i64();
            // Descending, records without points last.
            match (last_points, points) {
                (Some(last), Some(p)) => assert!(p <= last, "{p} after {last}"),
                (None, Some(p)) => panic!("{p} after the records without points"),
                _ => {}
            }
            last_points = points;
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        // Writes between pages: new records at both ends, and a record changed behind the
        // cursor (which must not reappear).
        round += 1;
        created(
            &app,
            "scores",
            json!({"id": format!("new-hi-{round}"), "points": 100, "team": "red"}),
        )
        .await;
        created(
            &app,
            "scores",
            json!({"id": format!("new-lo-{round}"), "team": "blue"}),
        )
        .await;
        let Some(cursor) = page["nextCursor"].as_str().map(str::to_string) else {
            break;
        };
        let response = app
            .request(Method::GET, "/v1/scores", "acme")
            .query(&[
                ("orderBy", "points:desc"),
                ("limit", "7"),
                ("cursor", &cursor),
                ("where", r#"{"team": {"in": ["red", "blue"]}}"#),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        page = response.json().await.unwrap();
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a record appeared twice: {seen:?}"
    );
    for id in &original {
        assert!(unique.contains(id), "{id} was skipped");
    }
    assert!(
        seen.iter().all(|id| !id.starts_with("new-hi")),
        "records before the cursor came back"
    );
}
both_backends!(
    keyset_pages_while_writes_happen,
    keyset_pages_stay_consistent_while_writes_happen
);

async fn transact_commits_every_operation_or_none(backend: Backend) {
    let app = spawn_app(backend).await;
    created(&app, "orders", json!({"id": "o1", "total": 10})).await;
    created(&app, "orders", json!({"id": "o2", "total": 20})).await;
    let body = json!({"operations": [
        {"op": "create", "entity": "users", "id": "u1", "data": {"name": "Ada"}},
        {"op": "update", "entity": "users", "id": "u1", "data": {"team": "core"}},
        {"op": "update", "entity": "orders", "id": "o1", "data": {"total": 11}, "ifMatch": 1},
        {"op": "replace", "entity": "orders", "id": "o2", "data": {"total": 21}},
        {"op": "delete", "entity": "orders", "id": "o2"}
    ]});
    let response = app
        .request(Method::POST, "/v1/_transact", "acme")
        .header("idempotency-key", "tx-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    remember(&app, &response);
    let result: Value = response.json().await.unwrap();
    let results = result["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["status"], 201);
    assert_eq!(results[0]["version"], 1);
    assert_eq!(results[1]["data"], json!({"name": "Ada", "team": "core"}));
    assert_eq!(results[1]["version"], 2);
    assert_eq!(results[2]["data"]["total"], 11);
    assert!(results[4]["deletedAt"].is_string());
    let replay = app
        .request(Method::POST, "/v1/_transact", "acme")
        .header("idempotency-key", "tx-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed, result);

    // One failing operation fails them all, naming its index; nothing of the others is written.
    let failing = send(
        &app,
        Method::POST,
        "/v1/_transact",
        json!({"operations": [
            {"op": "create", "entity": "users", "id": "u2", "data": {"name": "Grace"}},
            {"op": "update", "entity": "orders", "id": "o1", "data": {"total": 12}},
            {"op": "update", "entity": "orders", "id": "missing", "data": {"total": 1}},
            {"op": "create", "entity": "users", "id": "u3", "data": {}}
        ]}),
    )
    .await;
    assert_eq!(failing.status(), 404);
    let body: Value = failing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RESOURCE_NOT_FOUND");
    assert_eq!(body["error"]["details"]["resource"], "entity");
    assert_eq!(body["error"]["details"]["operation"], 2);
    let history = app
        .request(Method::GET, "/v1/users/u3/history", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), 404, "a failed _transact wrote events");
    let u2 = app
        .request(Method::GET, "/v1/users/u2", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(u2.status(), 404);
    let o1: Value = app
        .request(Method::GET, "/v1/orders/o1", "acme")
        .header("x-min-position", head(&app).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(o1["data"]["total"], 11);

    let stale = send(
        &app,
        Method::POST,
        "/v1/_transact",
        json!({"operations": [{"op": "update", "entity": "orders", "id": "o1", "data": {"total": 1}, "ifMatch": 1}]}),
    )
    .await;
    assert_eq!(error_code(stale).await, (409, "VERSION_CONFLICT".into()));
    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"op": "create", "entity": "users", "data": {"n": i}}))
        .collect();
    let refused = send(
        &app,
        Method::POST,
        "/v1/_transact",
        json!({"operations": too_many}),
    )
    .await;
    assert_eq!(error_code(refused).await, (400, "VALIDATION_ERROR".into()));
    let bad_op = send(
        &app,
        Method::POST,
        "/v1/_transact",
        json!({"operations": [{"op": "upsert", "entity": "users", "data": {}}]}),
    )
    .await;
    let body: Value = bad_op.json().await.unwrap();
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(body["error"]["details"]["operation"], 0);
}
both_backends!(
    transact_all_or_nothing,
    transact_commits_every_operation_or_none
);

async fn references_expand_restrict_and_nullify(backend: Backend) {
    let app = spawn_app(backend).await;
    define(
        &app,
        json!({"name": "teams", "fields": {"name": {"type": "string"}}}),
    )
    .await;
    let refused = send(
        &app,
        Method::POST,
        "/v1/entity-types",
        json!({"name": "bad-refs", "fields": {"x": {"type": "reference", "references": "nowhere"}}}),
    )
    .await;
    assert_eq!(error_code(refused).await, (400, "VALIDATION_ERROR".into()));
    define(
        &app,
        json!({"name": "members", "fields": {
            "name": {"type": "string"},
            "team": {"type": "reference", "references": "teams", "onDelete": "restrict", "indexed": true}
        }}),
    )
    .await;
    define(
        &app,
        json!({"name": "tickets", "fields": {
            "assignee": {"type": "reference", "references": "members", "onDelete": "nullify"}
        }}),
    )
    .await;
    created(&app, "teams", json!({"id": "core", "name": "Core"})).await;
    created(&app, "teams", json!({"id": "web", "name": "Web"})).await;
    let dangling = create(&app, "members", json!({"id": "m0", "team": "nope"})).await;
    assert_eq!(error_code(dangling).await, (400, "VALIDATION_ERROR".into()));
    created(
        &app,
        "members",
        json!({"id": "m1", "name": "Ada", "team": "core"}),
    )
    .await;
    created(
        &app,
        "members",
        json!({"id": "m2", "name": "Alan", "team": "core"}),
    )
    .await;
    created(&app, "tickets", json!({"id": "t1", "assignee": "m1"})).await;
    created(&app, "tickets", json!({"id": "t2", "assignee": "m1"})).await;

    // expand embeds the referenced record, one level deep, on GET and on lists.
    let at = head(&app).await;
    let member: Value = app
        .request(Method::GET, "/v1/members/m1?expand=team", "acme")
        .header("x-min-position", &at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(member["expanded"]["team"]["data"]["name"], "Core");
    let page: Value = list(&app, "tickets", &[("expand", "assignee")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"][0]["expanded"]["assignee"]["data"]["name"],
        "Ada"
    );
    let bad = list(&app, "members", &[("expand", "name")]).await;
    assert_eq!(error_code(bad).await, (400, "INVALID_PARAMETER".into()));

    // restrict: the team cannot go while members reference it.
    let restricted = send(&app, Method::DELETE, "/v1/teams/core", Value::Null).await;
    assert_eq!(restricted.status(), 409);
    let body: Value = restricted.json().await.unwrap();
    assert_eq!(body["error"]["code"], "REFERENCE_RESTRICTED");
    assert_eq!(
        body["error"]["details"]["referencedBy"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Moving a member releases its reference.
    let moved = send(
        &app,
        Method::PATCH,
        "/v1/members/m2",
        json!({"team": "web"}),
    )
    .await;
    assert_eq!(moved.status(), 200);

    // nullify: deleting the member removes the field from its tickets, in the same commit.
    let deleted = send(&app, Method::DELETE, "/v1/members/m1", Value::Null).await;
    assert_eq!(deleted.status(), 200);
    let at = head(&app).await;
    for ticket in ["t1", "t2"] {
        let read: Value = app
            .request(Method::GET, &format!("/v1/tickets/{ticket}"), "acme")
            .header("x-min-position", &at)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(read["data"], json!({}), "{ticket}");
        assert_eq!(read["version"], 2);
    }
    // A deleted record takes no new reference; the team can go once nothing references it.
    let to_deleted = create(&app, "tickets", json!({"assignee": "m1"})).await;
    assert_eq!(
        error_code(to_deleted).await,
        (400, "VALIDATION_ERROR".into())
    );
    let gone = send(&app, Method::DELETE, "/v1/teams/core", Value::Null).await;
    assert_eq!(gone.status(), 200);
    let still = send(&app, Method::DELETE, "/v1/teams/web", Value::Null).await;
    assert_eq!(
        error_code(still).await,
        (409, "REFERENCE_RESTRICTED".into())
    );
}
both_backends!(references, references_expand_restrict_and_nullify);

async fn history_and_change_feed_read_the_log(backend: Backend) {
    let app = spawn_app(backend).await;
    created(&app, "users", json!({"id": "u1", "name": "Ada"})).await;
    send(&app, Method::PATCH, "/v1/users/u1", json!({"team": "core"})).await;
    send(&app, Method::DELETE, "/v1/users/u1", Value::Null).await;
    created(&app, "orders", json!({"id": "o1"})).await;
    app.request(Method::POST, "/v1/users", "globex")
        .json(&json!({"id": "g1"}))
        .send()
        .await
        .unwrap();

    let history: Value = app
        .request(Method::GET, "/v1/users/u1/history", "acme")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = history["events"].as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["EntityCreated", "EntityUpdated", "EntityDeleted"]);
    assert_eq!(events[1]["changes"], json!({"team": "core"}));
    assert_eq!(events[1]["command"], "UpdateEntity");
    assert!(events[0]["actor"].as_str().unwrap().len() > 3);
    assert_eq!(events[2]["version"], 3);
    // Deleted records are listed for admins only.
    let issued: Value = send(
        &app,
        Method::POST,
        "/v1/api-keys",
        json!({"name": "reader", "roles": ["reader"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let reader = issued["apiKey"]["key"].as_str().unwrap().to_string();
    let forbidden = eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(Method::GET, "/v1/users?includeDeleted=true", &reader)
            .send()
            .await
            .ok()?;
        (response.status() != 401).then_some(response)
    })
    .await;
    assert_eq!(error_code(forbidden).await, (403, "FORBIDDEN".into()));
    let listed: Value = app
        .request(Method::GET, "/v1/users?includeDeleted=true", "acme")
        .header("x-min-position", head(&app).await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["items"][0]["deletedAt"].is_string());
    let none = app
        .request(Method::GET, "/v1/users/nobody/history", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(none).await, "entity");

    // The feed: this tenant's record events of one type, a page at a time. (On PostgreSQL a
    // commit shows once every older transaction of the cluster has ended: poll.)
    let (seen, after) = eventually(Duration::from_secs(10), || async {
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let mut path = "/v1/events?entity=users&limit=2".to_string();
            if let Some(after) = &after {
                path.push_str(&format!("&after={after}"));
            }
            let page: Value = app
                .request(Method::GET, &path, "acme")
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            for item in page["items"].as_array().unwrap() {
                assert_eq!(item["tenantId"], "acme");
                seen.push(item["eventType"].as_str().unwrap().to_string());
            }
            after = Some(page["nextCursor"].as_str().unwrap().to_string());
            if !page["hasMore"].as_bool().unwrap() {
                break;
            }
        }
        (seen.len() == 3).then_some((seen, after))
    })
    .await;
    assert_eq!(seen, ["EntityCreated", "EntityUpdated", "EntityDeleted"]);
    let created_only: Value = app
        .request(
            Method::GET,
            "/v1/events?types=EntityCreated,EntityDeleted&aggregateType=Entity&entity=users",
            "acme",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created_only["items"].as_array().unwrap().len(), 2);
    // Polling at the end returns nothing new and the same cursor.
    let end: Value = app
        .request(
            Method::GET,
            &format!("/v1/events?entity=users&after={}", after.as_ref().unwrap()),
            "acme",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(end["items"], json!([]));
    assert_eq!(end["nextCursor"].as_str(), after.as_deref());
    let bad = app
        .request(Method::GET, "/v1/events?after=nope", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad).await, (400, "INVALID_PARAMETER".into()));
}
both_backends!(
    history_and_change_feed,
    history_and_change_feed_read_the_log
);

/// A seed reports its records only once they are projected, even while an older transaction
/// of the PostgreSQL cluster holds back the log's readable horizon (events become readable
/// only when every older transaction has ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entity_seed_waits_for_the_read_horizon() {
    use sqlx::{Connection, Executor};
    let db = crate::helpers::TestDb::new(Backend::Postgres).await;
    let settings = db.settings();
    // A transaction with an id older than every event the seed writes, ended only after the
    // seed has written its records.
    let mut older = sqlx::PgConnection::connect(&db.url).await.unwrap();
    older.execute("BEGIN").await.unwrap();
    older.execute("SELECT pg_current_xact_id()").await.unwrap();
    let written = std::sync::Arc::new(tokio::sync::Notify::new());
    let end_older = {
        let written = written.clone();
        tokio::spawn(async move {
            written.notified().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            older.execute("COMMIT").await.unwrap();
        })
    };
    let report = app::seed::entities(&settings, "horizon", 300, 100, 2, |stage, done, total| {
        if stage == "create" && done == total {
            written.notify_one();
        }
    })
    .await
    .expect("the seed runs");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let projected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM entities WHERE tenant_id = 'horizon'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((report.records, projected), (300, 300));
    end_older.await.unwrap();
}

async fn the_entity_seed_loads_through_the_command_path(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let settings = db.settings();
    let mut stages = BTreeSet::new();
    let report = app::seed::entities(&settings, "seeded", 1_200, 250, 3, |stage, _, _| {
        stages.insert(stage.to_string());
    })
    .await
    .expect("the seed runs");
    assert_eq!(report.records, 1_200);
    // One event per record and no other: no unique fields, no references.
    assert_eq!(report.events, 1_200);
    assert!(stages.contains("create") && stages.contains("entities"));
    // A second run continues the numbering.
    let again = app::seed::entities(&settings, "seeded", 100, 250, 1, |_, _, _| {})
        .await
        .expect("the seed runs again");
    assert_eq!(again.records, 100);

    let app = crate::helpers::spawn_app_on(db.share(), |_| {}).await;
    let key = again.reader_key.clone();
    let all: Value = eventually(Duration::from_secs(20), || async {
        let all: Value = app
            .with_key(Method::GET, "/v1/items?count=exact&limit=1", &key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (all["total"] == 1_300).then_some(all)
    })
    .await;
    assert_eq!(all["items"][0]["id"], "item-00000000");
    let page: Value = app
        .with_key(Method::GET, "/v1/items", &key)
        .query(&[
            ("where", r#"{"category":"c07","price":{"gte":5000}}"#),
            ("count", "exact"),
            ("orderBy", "price:desc"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total = page["total"].as_i64().unwrap();
    assert!(total > 0 && total < 1_300, "{page}");
    let items = page["items"].as_array().unwrap();
    assert!(items.iter().all(|i| i["data"]["category"] == "c07" && i["data"]["price"].as_i64().unwrap() >= 5000));
    // The indexes of the indexed fields are built in the background; the type reports them
    // `building`, then `ready`, and then they exist.
    let statuses =
        ready_indexes(|| app.with_key(Method::GET, "/v1/entity-types/items", &key)).await;
    let fields: BTreeSet<&str> = statuses
        .iter()
        .map(|index| index["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["category", "name", "price", "status"].into());
    let log = app.db.log().await;
    let indexes = workers::rebuild::index_names(log.db(), "entities")
        .await
        .unwrap();
    for name in [
        "entities_category_t_idx",
        "entities_price_n_idx",
        "entities_status_t_idx",
        "entities_name_t_idx",
    ] {
        assert!(
            indexes.iter().any(|i| i == name),
            "{name} missing from {indexes:?}"
        );
    }
    // A rebuild of the records' read model keeps every index under its name.
    let projector = projections::all()
        .into_iter()
        .find(|p| p.name() == "entities")
        .unwrap();
    workers::rebuild::rebuild(&log, projector.as_ref(), 500, |_, _| {})
        .await
        .expect("the rebuild runs");
    let rebuilt = workers::rebuild::index_names(log.db(), "entities")
        .await
        .unwrap();
    assert_eq!(rebuilt, indexes);
}
both_backends!(
    the_entity_seed,
    the_entity_seed_loads_through_the_command_path
);

async fn concurrent_commands_sharing_commits_replay_exactly(backend: Backend) {
    let app = spawn_app(backend).await;
    // Concurrent creates share group commits; each one's stored response is its own.
    let create = |n: usize| {
        let app = &app;
        async move {
            app.request(Method::POST, "/v1/users", "acme")
                .header("idempotency-key", format!("grouped-{n}"))
                .json(&json!({"n": n}))
                .send()
                .await
                .unwrap()
        }
    };
    let first = futures::future::join_all((0..30).map(create)).await;
    let mut originals = Vec::new();
    for response in first {
        assert_eq!(response.status(), 201);
        originals.push(response.json::<Value>().await.unwrap());
    }
    let replays = futures::future::join_all((0..30).map(create)).await;
    for (n, response) in replays.into_iter().enumerate() {
        assert_eq!(response.headers()["x-idempotent-replay"], "true");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, originals[n], "replay {n}");
        assert_eq!(body["data"]["n"], n);
    }
}
both_backends!(
    concurrent_commands_replay_exactly,
    concurrent_commands_sharing_commits_replay_exactly
);

async fn writes_decided_on_cached_or_assumed_state_are_checked_at_commit(backend: Backend) {
    let app = spawn_app(backend).await;
    define(&app, json!({"name": "notes", "schemaless": true})).await;
    // The first write reads the type (and keeps it in memory for the next ones).
    created(&app, "notes", json!({"id": "n1", "text": "a long text"})).await;

    // The type changes behind the kept copy: the next write must see the new schema.
    let response = send(
        &app,
        Method::PATCH,
        "/v1/entity-types/notes",
        json!({"schemaless": true, "fields": {"text": {"type": "string", "maxLength": 3}}}),
    )
    .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let response = create(&app, "notes", json!({"text": "too long"})).await;
    assert_eq!(error_code(response).await, (400, "VALIDATION_ERROR".into()));
    created(&app, "notes", json!({"id": "n2", "text": "ok"})).await;

    // A create takes its record as new without reading it; the commit finds it exists.
    let response = create(&app, "notes", json!({"id": "n1", "text": "abc"})).await;
    assert_eq!(
        error_code(response).await,
        (409, "ENTITY_ALREADY_EXISTS".into())
    );

    // Ten concurrent creates with one key (and no id): one record, nine exact replays.
    let responses = futures::future::join_all((0..10).map(|_| {
        app.request(Method::POST, "/v1/notes", "acme")
            .header("idempotency-key", "one-note")
            .json(&json!({"text": "hey"}))
            .send()
    }))
    .await;
    let mut bodies = Vec::new();
    let mut replays = 0;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 201);
        if response.headers().contains_key("x-idempotent-replay") {
            replays += 1;
        }
        bodies.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(replays, 9);
    assert!(bodies.iter().all(|body| *body == bodies[0]));
    let history = send(
        &app,
        Method::GET,
        &format!("/v1/notes/{}/history", bodies[0]["id"].as_str().unwrap()),
        Value::Null,
    )
    .await;
    assert_eq!(history.status(), 200);
    let body: Value = history.json().await.unwrap();
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    // The key's first answer was a refusal: a retry is told the same.
    for _ in 0..2 {
        let response = app
            .request(Method::POST, "/v1/notes", "acme")
            .header("idempotency-key", "refused-note")
            .json(&json!({"text": "much too long"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response).await, (400, "VALIDATION_ERROR".into()));
    }
}
both_backends!(
    cached_and_assumed_state_is_checked,
    writes_decided_on_cached_or_assumed_state_are_checked_at_commit
);

/// Declaring an indexed field answers at once; the index is built in the background, the type
/// reports its status, and queries on the field work before it is ready. A build that fails
/// is reported with its error, and tried again later.
async fn indexes_build_in_the_background_and_report_their_status(backend: Backend) {
    let app = spawn_app(backend).await;
    let defined = define(
        &app,
        json!({"name": "parcels", "fields": {
            "zone": {"type": "string", "indexed": true},
            "weight": {"type": "integer", "unique": true},
            "note": {"type": "string"}}}),
    )
    .await;
    assert!(
        defined.get("indexes").is_none(),
        "a command's answer leaves them out"
    );
    created(
        &app,
        "parcels",
        json!({"id": "p1", "zone": "north", "weight": 3}),
    )
    .await;
    assert_eq!(
        ids(&app, "parcels", json!({"zone": "north"})).await,
        set(&["p1"]),
        "queries work whatever the index's state"
    );
    let indexes =
        ready_indexes(|| app.request(Method::GET, "/v1/entity-types/parcels", "acme")).await;
    let fields: Vec<&str> = indexes
        .iter()
        .map(|index| index["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["weight", "zone"]);
    assert_eq!(indexes[1]["name"], "entities_zone_t_idx");
    // The list reports them too (one query for every type's indexes).
    let listed: Value = app
        .request(Method::GET, "/v1/entity-types", "acme")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parcels = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["name"] == "parcels")
        .unwrap();
    assert_eq!(parcels["indexes"], Value::Array(indexes.clone()));
    let log = app.db.log().await;
    let existing = workers::rebuild::index_names(log.db(), "entities")
        .await
        .unwrap();
    assert!(existing.iter().any(|name| name == "entities_zone_t_idx"));
    if backend == Backend::Postgres {
        // The planner has the statistics of the indexed expression as soon as it is built.
        let (analyzed,): (i64,) = log
            .db()
            .fetch_one(eventlog::Statement::new(
                "SELECT count(*) FROM pg_stats WHERE tablename = 'entities_zone_t_idx'",
            ))
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(analyzed, 1);
    }

    // A build that cannot succeed is `failed`, with its error, and its attempts counted.
    let mut tx = log.db().begin().await.unwrap();
    tx.execute(eventlog::Statement::new(
        "INSERT INTO entity_indexes (name, definition, status, updated_at) \
         VALUES ('entities_broken_t_idx', \
                 'CREATE INDEX IF NOT EXISTS entities_broken_t_idx ON no_such_table (x)', \
                 'building', '2026-01-01T00:00:00Z')",
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let failed = eventually(Duration::from_secs(30), || async {
        let row: (String, Option<String>, i32) = log
            .db()
            .fetch_one(eventlog::Statement::new(
                "SELECT status, error, attempts FROM entity_indexes \
                 WHERE name = 'entities_broken_t_idx'",
            ))
            .await
            .ok()?
            .decode()
            .ok()?;
        (row.0 == "failed").then_some(row)
    })
    .await;
    assert!(failed.1.unwrap().contains("no_such_table"));
    assert_eq!(failed.2, 1);
    // Not tried again before its minute has passed.
    assert_eq!(workers::indexer::build_pending(log.db()).await.unwrap(), 0);
    let (attempts,): (i32,) = log
        .db()
        .fetch_one(eventlog::Statement::new(
            "SELECT attempts FROM entity_indexes WHERE name = 'entities_broken_t_idx'",
        ))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(attempts, 1, "no second try within the minute");
    log.db().close().await;
}
both_backends!(
    indexes_build_in_the_background_and_report_their_status,
    indexes_build_in_the_background_and_report_their_status
);
