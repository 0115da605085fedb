//! The OpenAPI document as a contract: every operation it lists, called with hostile path
//! parameters, query parameters, headers and bodies (seeded, so a failure repeats), answers
//! no 500 and only statuses the document declares for it. `CONTRACT_CASES` sets the cases per
//! operation (default 12); `CONTRACT_SEED` the seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::both_backends;
use crate::helpers::{ADMIN_KEY, Backend, spawn_app_with};

const HOSTILE: &[&str] = &[
    "x",
    "user-001",
    "acme",
    "",
    " ",
    "..",
    "%2e%2e",
    "a%00b",
    "a%0Ab",
    "%FF%FE",
    "%C3%A9t%C3%A9",
    "%F0%9F%A6%80",
    "key_nope",
    "agt_nope",
    "ses_nope",
    "-1",
    "0",
    "99999999999999999999999",
    "true",
    "null",
    "%7B%22a%22%3A1%7D",
    "2026-13-45",
    "tenant",
    "agent",
];

fn hostile(rng: &mut StdRng) -> String {
    if rng.gen_bool(0.1) {
        return "a".repeat(rng.gen_range(64..400));
    }
    HOSTILE[rng.gen_range(0..HOSTILE.len())].to_string()
}

/// A random JSON value, at most `depth` levels deep.
fn value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.gen_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.gen_bool(0.5)),
        2 => json!(rng.gen_range(-1_000_000_000_000i64..1_000_000_000_000)),
        3 => json!(rng.gen_range(-1e12..1e12)),
        4 => json!(hostile(rng)),
        5 => json!(
            [
                "hard",
                "soft",
                "user",
                "assistant",
                "admin",
                "reader",
                "string",
                "active"
            ][rng.gen_range(0..8)]
        ),
        6 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(object(rng, depth - 1)),
    }
}

/// Keys the gateway's bodies use, and some it does not.
const KEYS: &[&str] = &[
    "id",
    "name",
    "key",
    "fields",
    "type",
    "roles",
    "role",
    "content",
    "agentId",
    "customerId",
    "metadata",
    "primaryProvider",
    "fallbackProvider",
    "monthlyLimitUsd",
    "enforcement",
    "status",
    "rateLimitPerMinute",
    "operations",
    "op",
    "entity",
    "data",
    "schemaless",
    "expiresAt",
    "systemPrompt",
    "maxTokens",
    "temperature",
    "models",
    "where",
    "unknown",
    "",
];

fn object(rng: &mut StdRng, depth: usize) -> Map<String, Value> {
    (0..rng.gen_range(0..6))
        .map(|_| {
            (
                KEYS[rng.gen_range(0..KEYS.len())].to_string(),
                value(rng, depth),
            )
        })
        .collect()
}

fn body(rng: &mut StdRng) -> (Option<&'static str>, Vec<u8>) {
    match rng.gen_range(0..10) {
        0 => (Some("application/json"), br#"{"unterminated"#.to_vec()),
        1 => (Some("text/plain"), b"hello".to_vec()),
        2 => (Some("application/json"), Vec::new()),
        3 => (None, b"{}".to_vec()),
        4 => (
            Some("application/json"),
            value(rng, 3).to_string().into_bytes(),
        ),
        _ => (
            Some("application/json"),
            Value::Object(object(rng, 3)).to_string().into_bytes(),
        ),
    }
}

struct Operation {
    method: Method,
    path: String,
    parameters: Vec<(String, String)>,
    has_body: bool,
    declared: Vec<String>,
}

fn operations(document: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let parameters = operation["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            (
                                p["in"].as_str().unwrap_or_default().to_string(),
                                p["name"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Operation {
                method,
                path: path.clone(),
                parameters,
                has_body: operation.get("requestBody").is_some(),
                declared: operation["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect(),
            });
        }
    }
    out
}

async fn every_operation_keeps_its_contract(backend: Backend) {
    let app = spawn_app_with(backend, crate::helpers::quick).await;
    let document: Value = app.public_json("/openapi.json").await;
    let cases: usize = std::env::var("CONTRACT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("CONTRACT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261203);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut broken = Vec::new();
    let mut sent = 0;
    for operation in operations(&document) {
        for case in 0..cases {
            let mut path = operation.path.clone();
            let mut query = Vec::new();
            let mut headers = Vec::new();
            for (location, name) in &operation.parameters {
                match location.as_str() {
                    "path" => {
                        // A client resolves `..` before sending: that would call another
                        // operation than the one checked.
                        let mut segment = hostile(&mut rng);
                        while matches!(segment.as_str(), ".." | "%2e%2e") {
                            segment = hostile(&mut rng);
                        }
                        path = path.replace(&format!("{{{name}}}"), &segment);
                    }
                    "query" if rng.gen_bool(0.6) => {
                        query.push(format!("{name}={}", hostile(&mut rng)))
                    }
                    "header" if rng.gen_bool(0.5) => {
                        let raw = hostile(&mut rng);
                        headers.push((name.clone(), raw.replace('%', "")));
                    }
                    _ => {}
                }
            }
            let target = if query.is_empty() {
                path.clone()
            } else {
                format!("{path}?{}", query.join("&"))
            };
            let key = match rng.gen_range(0..10) {
                0 => None,
                1 => Some(ADMIN_KEY.to_string()),
                _ => Some(app.keys["acme"].clone()),
            };
            let mut request = app
                .client
                .request(operation.method.clone(), app.url(&target));
            if let Some(key) = &key {
                request = request.header("x-api-key", key);
            }
            for (name, value) in &headers {
                if let Ok(value) = reqwest::header::HeaderValue::from_str(value) {
                    request = request.header(name.as_str(), value);
                }
            }
            if operation.has_body || rng.gen_bool(0.1) {
                let (content_type, bytes) = body(&mut rng);
                if let Some(content_type) = content_type {
                    request = request.header("content-type", content_type);
                }
                request = request.body(bytes);
            }
            let response = match tokio::time::timeout(
                std::time::Duration::from_secs(20),
                request.send(),
            )
            .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    broken.push(format!(
                        "{} {target} (case {case}): {error}",
                        operation.method
                    ));
                    continue;
                }
                Err(_) => {
                    broken.push(format!(
                        "{} {target} (case {case}): no answer",
                        operation.method
                    ));
                    continue;
                }
            };
            sent += 1;
            let status = response.status().as_u16();
            let declared = operation.declared.iter().any(|d| d == &status.to_string());
            // Streams stay open: their head is the answer.
            let text = if response.headers().get("content-type").is_some_and(|v| {
                v.to_str()
                    .unwrap_or_default()
                    .starts_with("text/event-stream")
            }) {
                String::new()
            } else {
                response.text().await.unwrap_or_default()
            };
            if status >= 500 && !(status == 503 && text.contains("ALL_PROVIDERS_FAILED"))
                || !declared
            {
                broken.push(format!(
                    "{} {} -> {status}{} (case {case}): {}",
                    operation.method,
                    target.chars().take(120).collect::<String>(),
                    if declared { "" } else { " (not declared)" },
                    text.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    assert!(sent > 100, "only {sent} requests sent");
    assert!(
        broken.is_empty(),
        "{} broken of {sent}:\n{}",
        broken.len(),
        broken.join("\n")
    );
}
both_backends!(
    every_operation_keeps_its_contract,
    every_operation_keeps_its_contract
);

/// The document describes what the server does: every JSON success answers a schema (not
/// prose), every command declares the `Idempotency-Key` it reads with the length the server
/// enforces, and every `limit` its bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_body_and_constraint() {
    let app = spawn_app_with(Backend::Sqlite, crate::helpers::quick).await;
    let document: Value = app.public_json("/openapi.json").await;
    // Bodies that are not one JSON document of a schema here: the live stream, the metrics
    // text, this document itself and the other machine-readable documents.
    let free_form = [
        ("GET", "/v1/events/stream"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/asyncapi.json"),
        ("GET", "/websocket.schema.json"),
        ("GET", "/console"),
        ("GET", "/console/{asset}"),
    ];
    let mut missing = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            if free_form.contains(&(method.as_str(), path.as_str())) {
                continue;
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                if !status.starts_with('2') {
                    continue;
                }
                let schema = &response["content"]["application/json"]["schema"];
                if schema.is_null() {
                    missing.push(format!("{method} {path} {status}: no JSON schema"));
                }
            }
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let named = |name: &str| {
                parameters
                    .iter()
                    .find(|p| {
                        p["name"]
                            .as_str()
                            .is_some_and(|n| n.eq_ignore_ascii_case(name))
                    })
                    .cloned()
            };
            let secured = operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty());
            if secured && method != "GET" {
                match named("Idempotency-Key") {
                    Some(p) if p["schema"]["minLength"] == 1 && p["schema"]["maxLength"] == 255 => {
                    }
                    other => missing.push(format!(
                        "{method} {path}: Idempotency-Key not declared with its length: {other:?}"
                    )),
                }
            }
            if let Some(limit) = named("limit")
                && (limit["schema"]["minimum"] != 1
                    || limit["schema"]["maximum"].as_u64().is_none())
            {
                missing.push(format!("{method} {path}: limit without bounds: {limit}"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
