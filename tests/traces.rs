//! Traces over OTLP: one trace follows a command from the HTTP request through the commit,
//! the projectors and the relay's publish, received by a small local OTLP/HTTP receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::{Backend, TestDb, create_tenant, eventually, spawn_app_on};
use crate::streams::{Names, nats_url};

/// An OTLP/HTTP receiver of JSON span exports: every span it was sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let router = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(
                |axum::extract::State(received): axum::extract::State<Arc<Mutex<Vec<Value>>>>,
                 body: axum::body::Bytes| async move {
                    let export: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut spans = received.lock().unwrap();
                    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                        let service = resource["resource"]["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|a| a["key"] == "service.name")
                            .map(|a| a["value"]["stringValue"].clone())
                            .unwrap_or(Value::Null);
                        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                            for span in scope["spans"].as_array().into_iter().flatten() {
                                let mut span = span.clone();
                                span["service"] = service.clone();
                                spans.push(span);
                            }
                        }
                    }
                    axum::Json(json!({}))
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), received)
}

// One thread: every task of the application runs under the subscriber this test sets.
#[tokio::test(flavor = "current_thread")]
async fn one_trace_follows_a_command_through_commit_projectors_and_relay() {
    let (endpoint, received) = receiver().await;
    let names = Names::new();
    let adjust = |settings: &mut app::settings::Settings| {
        names.apply(settings, &nats_url());
        settings.otel_exporter_otlp_endpoint = Some(endpoint.clone());
        settings.otel_exporter_otlp_protocol = "http/json".into();
        settings.otel_service_name = "gateway-under-test".into();
    };
    let db = TestDb::new(Backend::Sqlite).await;
    let mut settings = db.settings();
    adjust(&mut settings);
    let provider = cli::telemetry::tracer_provider(&settings)
        .unwrap()
        .expect("an endpoint is set");
    let subscriber = tracing_subscriber::registry().with(cli::telemetry::spans_layer(&provider));
    let _subscriber = tracing::subscriber::set_default(subscriber);
    // Other tests on other threads register callsites concurrently, without this subscriber:
    // have every callsite's interest asked again now that it is set.
    tracing::callsite::rebuild_interest_cache();

    let log = db.log().await;
    let key = create_tenant(&log, "acme").await;
    let app = spawn_app_on(db, adjust).await;

    // The client's own span, which the gateway's spans continue.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let created = app
        .with_key(Method::POST, "/v1/users", &key)
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&json!({"id": "traced", "name": "Traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // The event carries the request span's context on NATS.
    let published = eventually(Duration::from_secs(20), || async {
        names
            .messages()
            .await
            .into_iter()
            .find(|m| m.subject.contains("EntityCreated"))
    })
    .await;
    let traceparent = published.headers.get("traceparent").unwrap().to_string();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains(client_span),
        "the gateway's own span: {traceparent}"
    );
    let request_span = traceparent.split('-').nth(2).unwrap().to_string();

    // Every span of the command's trace reaches the receiver.
    let wanted = ["POST /v1/{entity}", "commit", "project entities", "publish"];
    let spans = eventually(Duration::from_secs(20), || async {
        provider.force_flush().ok()?;
        let spans: Vec<Value> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["traceId"] == trace_id)
            .cloned()
            .collect();
        let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
        wanted
            .iter()
            .all(|w| names.iter().any(|n| n.starts_with(w)))
            .then_some(spans)
    })
    .await;
    let find = |name: &str| -> &Value {
        spans
            .iter()
            .find(|s| s["name"].as_str().unwrap().starts_with(name))
            .unwrap()
    };
    let request = find("POST /v1/{entity}");
    assert_eq!(request["spanId"], request_span.as_str());
    assert_eq!(
        request["parentSpanId"], client_span,
        "the client's span is the parent"
    );
    assert_eq!(request["service"], "gateway-under-test");
    for child in ["commit", "project entities", "publish"] {
        assert_eq!(
            find(child)["parentSpanId"],
            request_span.as_str(),
            "{child} is a child of the request"
        );
    }
    app.shutdown.cancel();
    let _ = app.server.await;
    names.delete().await;
    provider.shutdown().unwrap();
}
