//! The WebSocket channel (`/v1/ws`), over a real socket on both backends: subscriptions with
//! filters and resume cursors, requests answered as HTTP answers them, authentication by
//! header or first message, heartbeats and their timeout, credential re-checks.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::both_backends;
use crate::helpers::{Backend, TestApp, error_code, spawn_app, spawn_app_with};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, key: Option<&str>) -> Socket {
    let url = app.url("/v1/ws").replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("x-api-key", key.parse().unwrap());
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    socket
}

/// [`connect`] with a receive buffer of a few KiB (the kernel does not grow it): a client
/// that stops reading blocks the server after a few messages, however fast the server and the
/// kernel's buffers are.
async fn connect_small_buffer(app: &TestApp, key: &str) -> Socket {
    let url = app.url("/v1/ws").replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-api-key", key.parse().unwrap());
    let address = app.address.trim_start_matches("http://").parse().unwrap();
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(address).await.unwrap();
    let (socket, response) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    socket
}

/// The published schema of the channel's messages.
fn schema() -> Value {
    serde_json::from_str(include_str!("../docs/websocket.schema.json")).unwrap()
}

/// Checks `message` against the schema's definitions of `side` (`clientMessage` or
/// `serverMessage`): its `type` is declared there, it has every required property, and no
/// other property where the schema allows none.
fn conforms(side: &str, message: &Value) {
    let schema = schema();
    let kinds = schema["$defs"][side]["oneOf"].as_array().unwrap();
    let kind = message["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no type: {message}"));
    let definition = kinds
        .iter()
        .map(|k| {
            let name = k["$ref"].as_str().unwrap().trim_start_matches("#/$defs/");
            &schema["$defs"][name]
        })
        .find(|d| d["properties"]["type"]["const"] == kind)
        .unwrap_or_else(|| panic!("{side} '{kind}' is not in the schema"));
    for required in definition["required"].as_array().unwrap() {
        let name = required.as_str().unwrap();
        assert!(
            message.get(name).is_some(),
            "{kind} lacks '{name}': {message}"
        );
    }
    if definition["additionalProperties"] == false {
        for name in message.as_object().unwrap().keys() {
            assert!(
                definition["properties"].get(name).is_some(),
                "{kind} has an undeclared '{name}'"
            );
        }
    }
}

async fn send(socket: &mut Socket, message: Value) {
    if message["type"] != "launch" && message.get("type").is_some() {
        conforms("clientMessage", &message);
    }
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message that is not a heartbeat; `None` when the server closed.
async fn next(socket: &mut Socket) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("a message within 15 s")?;
        match frame.ok()? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                conforms("serverMessage", &value);
                if value["type"] != "heartbeat" {
                    return Some(value);
                }
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// The next message, which must be of `kind`.
async fn expect(socket: &mut Socket, kind: &str) -> Value {
    let message = next(socket).await.expect("the connection is open");
    assert_eq!(message["type"], kind, "{message}");
    message
}

/// The close frame's code, after reading what is left.
async fn close_code(socket: &mut Socket) -> Option<CloseCode> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("the server closes within 15 s");
        match frame {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => {}
            _ => return None,
        }
    }
}

async fn subscribes_answers_requests_and_resumes(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.keys["acme"].clone();
    let mut socket = connect(&app, Some(&key)).await;
    let ready = expect(&mut socket, "ready").await;
    assert_eq!(ready["tenant"], "acme");

    send(
        &mut socket,
        json!({"type": "subscribe", "id": "people", "entity": "users"}),
    )
    .await;
    let subscribed = expect(&mut socket, "subscribed").await;
    assert_eq!(subscribed["id"], "people");

    // A command over the socket, answered as HTTP answers it.
    send(
        &mut socket,
        json!({"type": "request", "id": "c1", "method": "POST", "path": "/v1/users",
               "body": {"id": "ws-1", "name": "Over the socket"}, "idempotencyKey": "ws-key-1"}),
    )
    .await;
    // The response and the event may come in either order.
    let (mut response, mut event) = (None, None);
    while response.is_none() || event.is_none() {
        let message = next(&mut socket).await.unwrap();
        match message["type"].as_str() {
            Some("response") => response = Some(message),
            Some("event") => event = Some(message),
            other => panic!("unexpected {other:?}: {message}"),
        }
    }
    let (response, event) = (response.unwrap(), event.unwrap());
    assert_eq!(response["id"], "c1");
    assert_eq!(response["status"], 201);
    assert_eq!(response["body"]["id"], "ws-1");
    assert_eq!(response["headers"]["location"], "/v1/users/ws-1");
    assert_eq!(event["subscription"], "people");
    assert_eq!(event["event"]["eventType"], "EntityCreated");
    assert_eq!(event["event"]["aggregateId"], "users/ws-1");
    assert_eq!(event["cursor"], event["event"]["cursor"]);
    assert_eq!(
        response["headers"]["x-event-position"], event["cursor"],
        "the response names the event's position"
    );
    // The same key over HTTP replays the socket's answer.
    let replay = app
        .request(Method::POST, "/v1/users", "acme")
        .header("idempotency-key", "ws-key-1")
        .json(&json!({"id": "ws-1", "name": "Over the socket"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["x-idempotent-replay"], "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed, response["body"]);
    // Refusals are HTTP's too.
    send(
        &mut socket,
        json!({"type": "request", "id": "c2", "method": "GET", "path": "/v1/nope-type/x"}),
    )
    .await;
    let refused = expect(&mut socket, "response").await;
    assert_eq!(
        (refused["id"].clone(), refused["status"].clone()),
        (json!("c2"), json!(404))
    );
    assert_eq!(refused["body"]["error"]["code"], "RESOURCE_NOT_FOUND");
    let last = event["cursor"].as_str().unwrap().to_string();
    send(
        &mut socket,
        json!({"type": "ack", "subscription": "people", "cursor": last}),
    )
    .await;

    // The client pings too; malformed messages are answered, not fatal.
    send(&mut socket, json!({"type": "ping", "id": 7})).await;
    assert_eq!(expect(&mut socket, "pong").await["id"], 7);
    for (bad, code) in [
        (
            json!({"type": "subscribe", "id": "people"}),
            "SUBSCRIPTION_EXISTS",
        ),
        (
            json!({"type": "unsubscribe", "id": "nobody"}),
            "UNKNOWN_SUBSCRIPTION",
        ),
        (json!({"type": "launch"}), "INVALID_MESSAGE"),
        (
            json!({"type": "subscribe", "id": "x", "after": "not-a-cursor"}),
            "INVALID_MESSAGE",
        ),
        (
            json!({"type": "request", "id": "c3", "method": "GET", "path": "/v1/events/stream"}),
            "INVALID_MESSAGE",
        ),
        (
            json!({"type": "request", "id": "c4", "method": "GET", "path": "/v1/users", "headers": {"x-api-key": "other"}}),
            "INVALID_MESSAGE",
        ),
    ] {
        send(&mut socket, bad.clone()).await;
        let answer = expect(&mut socket, "error").await;
        assert_eq!(answer["code"], code, "{bad}: {answer}");
    }
    socket.close(None).await.unwrap();

    // Written while nobody listened: an orders record (filtered out) and two users.
    for (entity, id) in [("orders", "o-1"), ("users", "ws-2"), ("users", "ws-3")] {
        let created = app.create("acme", entity, json!({"id": id})).await;
        assert_eq!(created.status(), 201);
    }
    // Resuming after the last event seen gets exactly what was missed.
    let mut socket = connect(&app, Some(&key)).await;
    expect(&mut socket, "ready").await;
    send(
        &mut socket,
        json!({"type": "subscribe", "id": "again", "entity": "users", "after": last}),
    )
    .await;
    expect(&mut socket, "subscribed").await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = expect(&mut socket, "event").await;
        seen.push(event["event"]["aggregateId"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["users/ws-2", "users/ws-3"]);
    send(&mut socket, json!({"type": "unsubscribe", "id": "again"})).await;
    let unsubscribed = expect(&mut socket, "unsubscribed").await;
    assert!(unsubscribed["cursor"].is_string());

    // Another tenant's socket sees none of acme's events.
    let mut other = connect(&app, Some(&app.keys["globex"].clone())).await;
    expect(&mut other, "ready").await;
    send(
        &mut other,
        json!({"type": "subscribe", "id": "all", "after": "beginning", "aggregateType": "Entity"}),
    )
    .await;
    expect(&mut other, "subscribed").await;
    send(&mut other, json!({"type": "ping", "id": "end"})).await;
    let next_message = expect(&mut other, "pong").await;
    assert_eq!(next_message["id"], "end");
}
both_backends!(
    subscribes_answers_requests_and_resumes,
    subscribes_answers_requests_and_resumes
);

async fn authenticates_by_header_or_first_message(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.stream_recheck_ms = 200).await;

    // The schema is published as it is in docs/.
    let published = app.public_json("/websocket.schema.json").await;
    assert_eq!(published, schema());

    // Not an upgrade: 426 in the error envelope.
    let plain = app
        .request(Method::GET, "/v1/ws", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(plain).await, (426, "UPGRADE_REQUIRED".into()));
    // A bad key in the headers never upgrades.
    let url = app.url("/v1/ws").replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-api-key", "gw_nope_nope".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());

    // A browser: no headers, then `auth`.
    let mut socket = connect(&app, None).await;
    send(&mut socket, json!({"type": "subscribe", "id": "s"})).await;
    assert_eq!(expect(&mut socket, "error").await["code"], "UNAUTHORIZED");
    let response = app
        .request(Method::POST, "/v1/api-keys", "acme")
        .json(&json!({"name": "socket", "roles": ["reader"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let issued: Value = response.json().await.unwrap();
    let key = issued["apiKey"]["key"].as_str().unwrap().to_string();
    let key_id = issued["apiKey"]["id"].as_str().unwrap().to_string();
    let at = issued["apiKey"]["createdAt"].clone();
    assert!(at.is_string());
    let ready = loop {
        // The new key reaches the credential read model shortly.
        send(&mut socket, json!({"type": "auth", "apiKey": key})).await;
        match next(&mut socket).await {
            Some(message) if message["type"] == "ready" => break message,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                socket = connect(&app, None).await;
            }
        }
    };
    assert_eq!(ready["tenant"], "acme");
    assert_eq!(ready["roles"], json!(["reader"]));
    send(&mut socket, json!({"type": "subscribe", "id": "s"})).await;
    expect(&mut socket, "subscribed").await;
    // A reader's request that needs a writer is refused as over HTTP.
    send(
        &mut socket,
        json!({"type": "request", "id": "w", "method": "POST", "path": "/v1/users", "body": {}}),
    )
    .await;
    let refused = expect(&mut socket, "response").await;
    assert_eq!(refused["status"], 403);

    // Revoking the key closes the socket within a re-check, with the cursor to resume from.
    let revoked = app
        .request(Method::DELETE, &format!("/v1/api-keys/{key_id}"), "acme")
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let close = expect(&mut socket, "close").await;
    assert_eq!(close["code"], "UNAUTHORIZED");
    assert!(close["subscriptions"]["s"]["cursor"].is_string());
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));

    // Wrong credentials in `auth` end the connection.
    let mut socket = connect(&app, None).await;
    send(
        &mut socket,
        json!({"type": "auth", "apiKey": "gw_nope_nope"}),
    )
    .await;
    assert_eq!(expect(&mut socket, "close").await["code"], "UNAUTHORIZED");
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::from(4401)));
}
both_backends!(
    authenticates_by_header_or_first_message,
    authenticates_by_header_or_first_message
);

async fn a_client_that_misses_pings_is_closed(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.ws_heartbeat_ms = 200).await;
    let key = app.keys["acme"].clone();

    // A client that stops reading misses the pings and is closed.
    let mut silent = connect(&app, Some(&key)).await;
    expect(&mut silent, "ready").await;
    send(&mut silent, json!({"type": "subscribe", "id": "s"})).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let close = loop {
        let message = next(&mut silent).await.expect("a close message");
        if message["type"] == "close" {
            break message;
        }
    };
    assert_eq!(close["code"], "HEARTBEAT_TIMEOUT");
    assert!(close["subscriptions"]["s"]["cursor"].is_string());
    assert_eq!(close_code(&mut silent).await, Some(CloseCode::from(4408)));

    // A client that reads (and so answers pings) stays.
    let mut alive = connect(&app, Some(&key)).await;
    expect(&mut alive, "ready").await;
    let mut heartbeats = 0;
    while heartbeats < 5 {
        let frame = tokio::time::timeout(Duration::from_secs(5), alive.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = frame {
            let message: Value = serde_json::from_str(text.as_str()).unwrap();
            assert_eq!(message["type"], "heartbeat");
            heartbeats += 1;
        }
    }

    // It is still there.
    send(&mut alive, json!({"type": "ping", "id": 1})).await;
    assert_eq!(expect(&mut alive, "pong").await["id"], 1);
}
both_backends!(
    a_client_that_misses_pings_is_closed,
    a_client_that_misses_pings_is_closed
);

async fn a_client_that_does_not_read_is_closed_with_its_cursor(backend: Backend) {
    // Enough events to fill the socket's buffers on both sides many times over.
    let db = crate::helpers::TestDb::new(backend).await;
    let seeded = app::seed::entities(&db.settings(), "slow", 20_000, 1_000, 2, |_, _, _| {})
        .await
        .unwrap();
    let app = crate::helpers::spawn_app_on(db.share(), |s| {
        s.ws_buffer = 4;
        s.ws_send_timeout_ms = 300;
    })
    .await;
    // A small receive buffer: the kernel's grown buffers could otherwise hold every event,
    // and the server, never blocked, would not close.
    let mut socket = connect_small_buffer(&app, &seeded.reader_key).await;
    expect(&mut socket, "ready").await;
    send(
        &mut socket,
        json!({"type": "subscribe", "id": "all", "after": "beginning", "entity": "items"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Reading now: what was written, then why it ended and where to resume.
    let mut last = None;
    // Bounded: a server that never blocked would stream the rest and then heartbeats forever.
    let close = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let message = next(&mut socket).await.expect("a close message");
            match message["type"].as_str() {
                Some("event") => last = Some(message["cursor"].clone()),
                Some("close") => break message,
                _ => {}
            }
        }
    })
    .await
    .expect("the server closes a client that did not read");
    assert_eq!(close["code"], "SLOW_CONSUMER");
    let resume = close["subscriptions"]["all"]["cursor"].clone();
    assert_eq!(
        Some(resume.clone()),
        last,
        "the cursor of the last event written"
    );
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::from(4429)));

    // Resuming from it continues with the next event, without a gap.
    let mut socket = connect(&app, Some(&seeded.reader_key)).await;
    expect(&mut socket, "ready").await;
    send(
        &mut socket,
        json!({"type": "subscribe", "id": "rest", "after": resume, "entity": "items", "maxUnacked": 10}),
    )
    .await;
    expect(&mut socket, "subscribed").await;
    let event = expect(&mut socket, "event").await;
    let resumed: eventlog::Cursor = event["cursor"].as_str().unwrap().parse().unwrap();
    let from: eventlog::Cursor = resume.as_str().unwrap().parse().unwrap();
    assert!(resumed > from);
    // With `maxUnacked`, ten events come, then nothing until an ack.
    let mut cursors = vec![event["cursor"].clone()];
    for _ in 0..9 {
        cursors.push(expect(&mut socket, "event").await["cursor"].clone());
    }
    send(&mut socket, json!({"type": "ping", "id": "window"})).await;
    assert_eq!(expect(&mut socket, "pong").await["id"], "window");
    send(
        &mut socket,
        json!({"type": "ack", "subscription": "rest", "cursor": cursors[4]}),
    )
    .await;
    for _ in 0..5 {
        expect(&mut socket, "event").await;
    }
    send(&mut socket, json!({"type": "ping", "id": "again"})).await;
    assert_eq!(expect(&mut socket, "pong").await["id"], "again");
}
both_backends!(
    a_client_that_does_not_read_is_closed_with_its_cursor,
    a_client_that_does_not_read_is_closed_with_its_cursor
);

async fn shutting_down_closes_sockets_with_their_cursors(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let key = app.keys["acme"].clone();
    let mut socket = connect(&app, Some(&key)).await;
    expect(&mut socket, "ready").await;
    send(
        &mut socket,
        json!({"type": "subscribe", "id": "s", "after": "beginning"}),
    )
    .await;
    expect(&mut socket, "subscribed").await;
    app.shutdown.cancel();
    let close = loop {
        let message = next(&mut socket).await.expect("a close message");
        if message["type"] == "close" {
            break message;
        }
    };
    assert_eq!(close["code"], "SERVER_STOPPING");
    assert!(close["subscriptions"]["s"]["cursor"].is_string());
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Away));
    // The server waits for its sockets, then stops.
    let server = std::mem::replace(&mut app.server, tokio::spawn(async { Ok(()) }));
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}
both_backends!(
    shutting_down_closes_sockets_with_their_cursors,
    shutting_down_closes_sockets_with_their_cursors
);
