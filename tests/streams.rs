//! The NATS relay and the live event stream, against a real NATS JetStream
//! (`GATEWAY_TEST_NATS_URL`, or a private server: see `servers`). Each test uses a stream and
//! subject prefix of its own.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::settings::Settings;
use async_nats::jetstream;
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use eventlog::{Cursor, EventLog, NewEvent, StreamAppend, StreamId};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::both_backends;
use crate::helpers::{Backend, Process, TestApp, TestDb, eventually, spawn_app_with};

pub(crate) fn nats_url() -> String {
    crate::servers::nats_url()
}

/// A JetStream stream and subject prefix used by one test only.
#[derive(Clone)]
pub(crate) struct Names {
    stream: String,
    pub(crate) prefix: String,
}

impl Names {
    pub(crate) fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            stream: format!("GWT_{}", id.to_uppercase()),
            prefix: format!("gwt{id}"),
        }
    }

    pub(crate) fn apply(&self, settings: &mut Settings, url: &str) {
        settings.nats_url = Some(url.to_string());
        settings.nats_stream = self.stream.clone();
        settings.nats_subject_prefix = self.prefix.clone();
        settings.relay_batch_size = 50;
        settings.relay_max_in_flight = 16;
        settings.projector_poll_ms = 50;
    }

    async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(nats_url()).await.unwrap_or_else(|e| {
            panic!(
                "NATS must be reachable at {} (GATEWAY_TEST_NATS_URL, or unset for a private server): {e}",
                nats_url()
            )
        });
        jetstream::new(client)
    }

    /// Every message of the stream, in stream order.
    pub(crate) async fn messages(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let js = self.jetstream().await;
        let Ok(stream) = js.get_stream(&self.stream).await else {
            return Vec::new();
        };
        let info = stream.get_info().await.unwrap();
        if info.state.messages == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for sequence in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                out.push(message);
            }
        }
        out
    }

    pub(crate) async fn delete(&self) {
        let _ = self.jetstream().await.delete_stream(&self.stream).await;
    }
}

fn header(message: &async_nats::jetstream::message::StreamMessage, name: &str) -> String {
    message
        .headers
        .get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// Every event id in the log, read through stream versions' upper bound: all readable events.
async fn log_event_ids(log: &EventLog) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    let mut cursor = Cursor::START;
    loop {
        let batch = log.read_after(cursor, 1000).await.unwrap();
        let Some(last) = batch.last() else { return ids };
        cursor = last.cursor;
        ids.extend(batch.iter().map(|e| e.event_id));
    }
}

/// Waits until the stream holds exactly the log's events, once each.
async fn assert_published_exactly_once(
    names: &Names,
    log: &EventLog,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let messages = eventually(Duration::from_secs(60), || async {
        let (in_log, _) = log.backlog(Cursor::START).await.ok()?;
        let messages = names.messages().await;
        (messages.len() as u64 >= in_log).then_some(messages)
    })
    .await;
    let ids: Vec<String> = messages.iter().map(|m| header(m, "Nats-Msg-Id")).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event published twice");
    let logged: HashSet<String> = log_event_ids(log)
        .await
        .iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(unique.len(), logged.len(), "as many messages as events");
    assert!(
        ids.iter().all(|id| logged.contains(id)),
        "every message is an event of the log"
    );
    // Per aggregate, the stream keeps the log's order.
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for message in &messages {
        let key = (
            header(message, "Gateway-Tenant"),
            header(message, "Gateway-Aggregate-Id"),
        );
        let sequence: i64 = header(message, "Gateway-Sequence").parse().unwrap();
        let previous = last.insert(key.clone(), sequence).unwrap_or(0);
        assert_eq!(sequence, previous + 1, "order of {key:?}");
    }
    messages
}

async fn every_event_is_published_once_in_log_order(backend: Backend) {
    let names = Names::new();
    let app = spawn_app_with(backend, |s| names.apply(s, &nats_url())).await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let app = &app;
            async move {
                for r in 0..3 {
                    let id = format!("w{w}.r{r}");
                    let created = app
                        .create("acme", "orders", json!({ "id": id, "n": 0 }))
                        .await;
                    assert_eq!(created.status(), 201);
                    for n in 1..=3 {
                        let patched = app
                            .request(Method::PATCH, &format!("/v1/orders/{id}"), "acme")
                            .json(&json!({ "n": n }))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(patched.status(), 200);
                    }
                }
            }
        })
        .collect();
    futures::future::join_all(writers).await;
    let log = app.db.log().await;
    let messages = assert_published_exactly_once(&names, &log).await;

    let order = messages
        .iter()
        .find(|m| header(m, "Gateway-Aggregate-Id") == "orders/w3.r1")
        .expect("the record's events are in the stream");
    assert_eq!(
        order.subject.as_str(),
        format!(
            "{}.acme.Entity.EntityCreated.orders%2Fw3%2Er1",
            names.prefix
        )
    );
    let envelope: Value = serde_json::from_slice(&order.payload).unwrap();
    assert_eq!(envelope["aggregateId"], "orders/w3.r1");
    assert_eq!(envelope["payload"]["data"]["n"], 0);
    assert_eq!(envelope["cursor"], header(order, "Gateway-Cursor"));
    assert!(!header(order, "Gateway-Request-Id").is_empty());

    let ready: Value = app.public_json("/ready").await;
    assert_eq!(ready["relay"]["status"], "ok");
    names.delete().await;
}
both_backends!(
    every_event_is_published_once_in_log_order,
    every_event_is_published_once_in_log_order
);

/// A TCP proxy (to NATS or PostgreSQL) whose traffic the test can cut and restore.
pub(crate) struct Proxy {
    address: SocketAddr,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (accept_open, accept_connections) = (open.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_connections.lock().unwrap().push(task);
            }
        });
        Self {
            address,
            open,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.address)
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(crate) fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub(crate) fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

async fn nats_address() -> SocketAddr {
    let url = nats_url();
    let host = url.trim_start_matches("nats://");
    tokio::net::lookup_host(host).await.unwrap().next().unwrap()
}

async fn commands_succeed_while_nats_is_unreachable_and_nothing_is_lost(backend: Backend) {
    let names = Names::new();
    let proxy = Proxy::start(nats_address().await).await;
    let app = spawn_app_with(backend, |s| names.apply(s, &proxy.url())).await;
    for i in 0..10 {
        assert_eq!(
            app.create("acme", "orders", json!({ "id": format!("before-{i}") }))
                .await
                .status(),
            201
        );
    }
    let log = app.db.log().await;
    assert_published_exactly_once(&names, &log).await;

    proxy.cut();
    for i in 0..30 {
        let created = app
            .create("acme", "orders", json!({ "id": format!("during-{i}") }))
            .await;
        assert_eq!(created.status(), 201, "commands do not depend on NATS");
    }
    let degraded: Value = eventually(Duration::from_secs(30), || async {
        let ready: Value = app
            .client
            .get(app.url("/ready"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (ready["relay"]["status"] == "degraded").then_some(ready)
    })
    .await;
    assert_eq!(
        degraded["status"], "ready",
        "a degraded relay does not make the gateway unready"
    );
    assert!(degraded["relay"]["lagEvents"].as_u64().unwrap() > 0);

    proxy.restore();
    assert_published_exactly_once(&names, &log).await;
    eventually(Duration::from_secs(30), || async {
        let ready: Value = app
            .client
            .get(app.url("/ready"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (ready["relay"]["status"] == "ok" && ready["relay"]["lagEvents"] == 0).then_some(())
    })
    .await;
    names.delete().await;
}
both_backends!(
    commands_succeed_while_nats_is_unreachable_and_nothing_is_lost,
    commands_succeed_while_nats_is_unreachable_and_nothing_is_lost
);

async fn append_backlog(log: &EventLog, events: usize) {
    let tenant = TenantId::parse("acme").unwrap();
    for chunk in 0..events / 100 {
        let batch: Vec<StreamAppend> = (0..100)
            .map(|i| StreamAppend {
                stream: StreamId::new(tenant.clone(), "Backlog", format!("b{chunk}-{i}")),
                expected_version: 0,
                events: vec![NewEvent {
                    event_id: uuid::Uuid::now_v7(),
                    event_type: "BacklogFilled".into(),
                    event_version: "1.0".into(),
                    payload: json!({ "chunk": chunk, "i": i }).into(),
                    recorded_at: None,
                }],
                metadata: EventMetadata::new(tenant.clone(), "test", "req", "FillBacklog"),
            })
            .collect();
        log.append(&batch).await.unwrap();
    }
}

async fn a_killed_relay_is_replaced_without_loss_or_duplicates(backend: Backend) {
    let names = Names::new();
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    // Large enough, and published in small enough batches, that the kill lands mid-way.
    append_backlog(&log, 20_000).await;
    let mut settings = db.settings();
    names.apply(&mut settings, &nats_url());
    settings.relay_batch_size = 50;
    settings.relay_max_in_flight = 4;

    let first = Process::start(settings.clone());
    eventually(Duration::from_secs(30), || async {
        (names.messages().await.len() >= 300).then_some(())
    })
    .await;
    let standby = Process::start(settings);
    first.kill(); // mid-way through the backlog, possibly mid-batch
    let before_takeover = names.messages().await.len();
    assert!(
        before_takeover < 20_000,
        "killed before the end ({before_takeover} published)"
    );

    assert_published_exactly_once(&names, &log).await;
    drop(standby);
    names.delete().await;
}
both_backends!(
    a_killed_relay_is_replaced_without_loss_or_duplicates,
    a_killed_relay_is_replaced_without_loss_or_duplicates
);

/// Reads Server-Sent Events until `count` events arrived; returns (id, event type, data).
async fn read_sse(response: reqwest::Response, count: usize) -> Vec<(String, String, Value)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut response = response;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("events arrive in time")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !id.is_empty() {
                events.push((id, kind, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

async fn open_stream(app: &TestApp, query: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app.request(Method::GET, &format!("/v1/events/stream?{query}"), "acme");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    response
}

async fn a_resumed_event_stream_continues_exactly_where_it_stopped(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    for i in 0..6 {
        assert_eq!(
            app.create("acme", "orders", json!({ "id": format!("o{i}") }))
                .await
                .status(),
            201
        );
        // Other tenants' and other types' events are never in this stream.
        app.create("globex", "orders", json!({ "id": format!("g{i}") }))
            .await;
        app.create("acme", "invoices", json!({ "id": format!("i{i}") }))
            .await;
    }
    let first = read_sse(
        open_stream(&app, "after=beginning&entity=orders", None).await,
        4,
    )
    .await;
    let ids: Vec<&str> = first
        .iter()
        .map(|e| e.2["aggregateId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["orders/o0", "orders/o1", "orders/o2", "orders/o3"]);
    assert!(
        first
            .iter()
            .all(|e| e.1 == "EntityCreated" && e.2["tenantId"] == "acme")
    );

    // Reconnect after the second event: exactly the continuation, then live events.
    let resumed = open_stream(&app, "entity=orders", Some(&first[1].0)).await;
    let live = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.create("acme", "orders", json!({ "id": "live" })).await;
    };
    let (rest, ()) = tokio::join!(read_sse(resumed, 5), live);
    let ids: Vec<&str> = rest
        .iter()
        .map(|e| e.2["aggregateId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "orders/o2",
            "orders/o3",
            "orders/o4",
            "orders/o5",
            "orders/live"
        ]
    );

    let by_type = read_sse(
        open_stream(&app, "after=beginning&types=TenantCreated", None).await,
        1,
    )
    .await;
    assert_eq!(by_type[0].2["aggregateId"], "acme");
    let bad = app
        .request(Method::GET, "/v1/events/stream", "acme")
        .header("last-event-id", "not-a-cursor")
        .send()
        .await
        .unwrap();
    assert_eq!(
        crate::helpers::error_code(bad).await,
        (400, "INVALID_PARAMETER".into())
    );
}
both_backends!(
    a_resumed_event_stream_continues_exactly_where_it_stopped,
    a_resumed_event_stream_continues_exactly_where_it_stopped
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_consumer_applies_each_event_once() {
    let names = Names::new();
    let app = spawn_app_with(Backend::Sqlite, |s| names.apply(s, &nats_url())).await;
    for i in 0..5 {
        assert_eq!(
            app.create("acme", "orders", json!({ "id": format!("c{i}") }))
                .await
                .status(),
            201
        );
    }
    let log = app.db.log().await;
    assert_published_exactly_once(&names, &log).await;
    let state = std::env::temp_dir().join(format!("consumer-{}.db", uuid::Uuid::new_v4()));
    let settings = |durable: &str| workers::consumer::ConsumerSettings {
        url: nats_url(),
        stream: names.stream.clone(),
        durable: durable.into(),
        filter_subject: Some(format!("{}.acme.Entity.>", names.prefix)),
        state: state.clone(),
    };
    let run = |durable: &'static str| {
        let settings = settings(durable);
        async move {
            let mut out = Vec::new();
            let report = workers::consumer::run(
                &settings,
                None,
                Some(Duration::from_secs(2)),
                &mut out,
                tokio_util::sync::CancellationToken::new(),
            )
            .await
            .unwrap();
            (report, String::from_utf8(out).unwrap())
        }
    };
    let (first, printed) = run("billing").await;
    assert_eq!(first.applied, 5);
    let ids: HashSet<String> = printed
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["aggregateId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 5);
    // The same durable consumer resumes after what it acknowledged: nothing new.
    let (again, _) = run("billing").await;
    assert_eq!(again, workers::consumer::ConsumerReport::default());
    // A fresh consumer sees every message again (as after a lost ack); the state skips them.
    let (redelivered, printed) = run("billing-replayed").await;
    assert_eq!(
        (redelivered.applied, redelivered.skipped_duplicates),
        (0, 5)
    );
    assert!(printed.is_empty());
    let _ = std::fs::remove_file(&state);
    names.delete().await;
}

async fn a_gateway_started_without_nats_serves_and_publishes_once_nats_is_up(backend: Backend) {
    let names = Names::new();
    let proxy = Proxy::start(nats_address().await).await;
    proxy.cut();
    let app = spawn_app_with(backend, |s| names.apply(s, &proxy.url())).await;
    for i in 0..5 {
        let created = app
            .create("acme", "orders", json!({ "id": format!("early-{i}") }))
            .await;
        assert_eq!(
            created.status(),
            201,
            "the gateway serves commands without NATS"
        );
    }
    let ready: Value = app.public_json("/ready").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["relay"]["status"], "degraded");
    proxy.restore();
    let log = app.db.log().await;
    assert_published_exactly_once(&names, &log).await;

    // Re-driving the whole log within the duplicate window adds no copy.
    workers::relay::replay_from(&log, Cursor::START)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || async {
        let lag = projections::progress::lag(&log, workers::relay::CHECKPOINT)
            .await
            .ok()?;
        (lag.events == 0).then_some(())
    })
    .await;
    assert_published_exactly_once(&names, &log).await;
    names.delete().await;
}
both_backends!(
    a_gateway_started_without_nats_serves_and_publishes_once_nats_is_up,
    a_gateway_started_without_nats_serves_and_publishes_once_nats_is_up
);
