//! The event catalogue (`/asyncapi.json`, `docs/events.md`): every event type the domain
//! defines is in it, and every event a real workload writes matches its schema as published.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, create_agent, create_session, define_types, quick, send, spawn_app_with,
};

/// The event types named in the domain's `event_type` implementations, read from the source
/// (not from the types the catalogue is built from).
fn event_types_in_the_source() -> Vec<String> {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../domain/src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (start, _) in text.match_indices("fn event_type(&self) -> String {") {
            let body = &text[start..start + text[start..].find("\n    }\n").unwrap()];
            for arm in body.split("=> \"").skip(1) {
                found.push(arm[..arm.find('"').unwrap()].to_string());
            }
        }
    }
    found.sort();
    found
}

/// Whether `value` matches `schema` (the subset of JSON Schema the catalogue uses), with
/// `$ref`s resolved in `document`. The reason when it does not.
fn check(document: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let mut node = document;
        for part in reference.trim_start_matches("#/").split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "{reference} does not resolve");
        return check(document, node, value, at);
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check(document, part, value, at)?;
    }
    if let Some(options) = schema["oneOf"].as_array()
        && !options
            .iter()
            .any(|o| check(document, o, value, at).is_ok())
    {
        return Err(format!("{at}: {value} matches none of {schema}"));
    }
    if let Some(expected) = schema.get("const")
        && expected != value
    {
        return Err(format!("{at}: {value} is not {expected}"));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {values:?}"));
    }
    let kinds: Vec<&str> = match &schema["type"] {
        Value::String(kind) => vec![kind.as_str()],
        Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !kinds.is_empty() {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let fits = kinds.contains(&actual) || (actual == "integer" && kinds.contains(&"number"));
        if !fits {
            return Err(format!("{at}: {value} is not {kinds:?}"));
        }
    }
    if let (Some(minimum), Some(number)) = (schema["minimum"].as_f64(), value.as_f64())
        && number < minimum
    {
        return Err(format!("{at}: {number} is below {minimum}"));
    }
    if let Value::Object(fields) = value {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !fields.contains_key(name) {
                return Err(format!(
                    "{at}: required field {name} is missing from {value}"
                ));
            }
        }
        let properties = schema["properties"].as_object();
        for (name, field) in fields {
            let path = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(declared) => check(document, declared, field, &path)?,
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => return Err(format!("{path} is not declared")),
                    extra @ Value::Object(_) => check(document, extra, field, &path)?,
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (index, item) in items.iter().enumerate() {
            check(document, item_schema, item, &format!("{at}[{index}]"))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn event_catalogue_has_every_event_type_and_real_events_match_it() {
    let app = spawn_app_with(Backend::Sqlite, quick).await;
    let document = app.public_json("/asyncapi.json").await;
    assert_eq!(document["asyncapi"], "3.0.0");
    let messages = document["components"]["messages"].as_object().unwrap();

    // Every event type of the domain is in the document, and nothing else.
    let in_source = event_types_in_the_source();
    assert!(in_source.len() >= 30, "{in_source:?}");
    let mut documented: Vec<String> = messages.keys().cloned().collect();
    documented.sort();
    assert_eq!(in_source, documented);

    // A workload that writes most kinds of events.
    let types = [
        json!({"name": "people", "fields": {"name": {"type": "string", "required": true},
               "email": {"type": "string", "unique": true}}}),
        json!({"name": "teams", "fields": {"name": {"type": "string"},
               "lead": {"type": "reference", "references": "people", "onDelete": "nullify"}},
               "relations": {"members": {"to": "people"}}}),
    ];
    define_types(&app, "acme", &types).await;
    let requests = [
        (
            Method::POST,
            "/v1/people",
            json!({"id": "ada", "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            Method::POST,
            "/v1/people",
            json!({"id": "bob", "name": "Bob"}),
        ),
        (
            Method::POST,
            "/v1/teams",
            json!({"id": "core", "name": "Core", "lead": "ada"}),
        ),
        (
            Method::PUT,
            "/v1/teams/core/relations/members/bob",
            Value::Null,
        ),
        (
            Method::DELETE,
            "/v1/teams/core/relations/members/bob",
            Value::Null,
        ),
        (
            Method::PATCH,
            "/v1/people/ada",
            json!({"email": "lovelace@example.com"}),
        ),
        (Method::PUT, "/v1/people/bob", json!({"name": "Robert"})),
        (Method::DELETE, "/v1/people/ada", Value::Null),
        (
            Method::PATCH,
            "/v1/entity-types/people",
            json!({"fields": {"name": {"type": "string", "required": true},
            "email": {"type": "string", "unique": true}, "age": {"type": "integer"}}}),
        ),
        (
            Method::PUT,
            "/v1/budgets/tenant",
            json!({"monthlyLimitUsd": "0.000001", "enforcement": "soft"}),
        ),
        (
            Method::POST,
            "/v1/api-keys",
            json!({"name": "temp", "roles": ["reader"]}),
        ),
    ];
    for (method, path, body) in requests {
        let request = app.request(method.clone(), path, "acme");
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path}: {} {}",
            response.status(),
            response.text().await.unwrap()
        );
    }
    let body =
        json!({"name": "Support", "primaryProvider": "vendorA", "fallbackProvider": "vendorB"});
    let agent = create_agent(&app, "acme", body).await;
    let session = create_session(&app, "acme", &agent).await;
    assert_eq!(
        send(&app, "acme", &session, "c-1", "Hello").await.status(),
        201
    );
    let archived = app
        .request(Method::DELETE, &format!("/v1/agents/{agent}"), "acme")
        .send()
        .await
        .unwrap();
    assert!(archived.status().is_success(), "{}", archived.status());

    // Every event of the log, as the relay publishes it, matches its message's payload.
    let log = app.db.log().await;
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = eventlog::Cursor::START;
    loop {
        let events = log.read_after(cursor, 500).await.unwrap();
        let Some(last) = events.last() else { break };
        cursor = last.cursor;
        for event in events {
            let message = &messages
                .get(&event.event_type)
                .unwrap_or_else(|| panic!("{} is not in the catalogue", event.event_type));
            let envelope = event.envelope();
            check(&document, &message["payload"], &envelope, &event.event_type)
                .unwrap_or_else(|reason| panic!("{reason}"));
            let channel = if event.visibility().is_public() {
                "events"
            } else {
                "restrictedEvents"
            };
            assert!(
                document["channels"][channel]["messages"][&event.event_type].is_object(),
                "{} on {channel}",
                event.event_type
            );
            seen.insert(event.event_type.clone());
        }
    }
    assert!(seen.len() >= 20, "the workload wrote only {seen:?}");
    // The check can fail: a payload of the wrong shape does not match.
    let mut wrong = log.read_after(eventlog::Cursor::START, 1).await.unwrap()[0].envelope();
    let schema = &messages[wrong["eventType"].as_str().unwrap()]["payload"];
    wrong["payload"]["id"] = json!(42);
    assert!(
        check(&document, schema, &wrong, "wrong").is_err(),
        "{wrong}"
    );
    wrong["sequence"] = json!("one");
    assert!(check(&document, schema, &wrong, "wrong").is_err());
    log.db().close().await;

    // docs/events.md is the document's Markdown.
    let generated =
        workers::catalogue::markdown(&workers::catalogue::asyncapi("gateway", "GATEWAY"));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md");
    if std::env::var_os("GATEWAY_WRITE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/events.md is out of date: GATEWAY_WRITE_DOCS=1 cargo test -p gateway-tests -- event_catalogue"
    );
    app.shutdown.cancel();
}
