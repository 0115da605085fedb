//! Usage metering and analyst queries, black-box: exact rollups after a mixed workload,
//! parameters, time zones, CSV, budgets under concurrency, and `gateway usage verify`.

use std::time::Duration;

use app::providers::simulated::Simulation;
use chrono::{DateTime, TimeZone, Utc};
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use domain::provider::Price;
use domain::session::{AssistantReply, SessionEvent};
use eventlog::{NewEvent, StreamAppend, StreamId};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    Backend, TestApp, create_agent, create_session, error_code, eventually, json_of, not_found,
    quick, send, spawn_app_with,
};
use crate::streams::{Names, nats_url};

async fn agent(app: &TestApp, tenant: &str, name: &str, primary: &str, fallback: &str) -> String {
    let body = json!({"name": name, "primaryProvider": primary, "fallbackProvider": fallback});
    create_agent(app, tenant, body).await
}

async fn get(app: &TestApp, tenant: &str, path: &str) -> reqwest::Response {
    app.request(Method::GET, path, tenant).send().await.unwrap()
}

/// The usage projection once it has applied every event committed so far. The target is
/// the newest committed event, read directly: `EventLog::head` stops below the oldest
/// transaction still open anywhere on the PostgreSQL server, which other tests hold open.
pub(crate) async fn settled(app: &TestApp) {
    let log = app.db.log().await;
    let (transaction, position): (i64, i64) = match log.db() {
        eventlog::Db::Postgres(pool) => sqlx::query_as(
            "SELECT transaction_id::text::bigint, global_position FROM events \
             ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
        )
        .fetch_one(pool)
        .await
        .unwrap(),
        eventlog::Db::Sqlite(pools) => sqlx::query_as("SELECT 0, MAX(global_position) FROM events")
            .fetch_one(&pools.reader)
            .await
            .unwrap(),
    };
    let newest = eventlog::Cursor::new(transaction, position);
    eventually(Duration::from_secs(20), || async {
        let at = projections::checkpoints::read(log.db(), projections::usage::NAME)
            .await
            .ok()??;
        (at >= newest).then_some(())
    })
    .await;
    log.db().close().await;
}

/// A rollup range around today.
pub(crate) fn around_today() -> String {
    let today = Utc::now().date_naive();
    format!(
        "from={}&to={}",
        today - chrono::Duration::days(30),
        today + chrono::Duration::days(30)
    )
}

async fn usage_is_exact_after_a_mixed_workload(backend: Backend) {
    let app = spawn_app_with(backend, quick).await;
    let support = agent(&app, "acme", "Support", "vendorA", "vendorB").await;
    let sales = agent(&app, "acme", "Sales", "vendorB", "vendorA").await;
    let s1 = create_session(&app, "acme", &support).await;
    let s2 = create_session(&app, "acme", &sales).await;
    let mut billed: Vec<Value> = Vec::new();
    let mut expect_201 = |body: Value| billed.push(body["metadata"]["usage"].clone());

    // Plain replies, a replay (not billed again), a fallback, a failure then its retry.
    let first = send(&app, "acme", &s1, "u-1", "Hello there").await;
    assert_eq!(first.status(), 201);
    expect_201(json_of(first).await);
    let replay = send(&app, "acme", &s1, "u-1", "Hello there").await;
    assert_eq!(replay.status(), 200);
    let second = send(&app, "acme", &s2, "u-2", "Pricing please").await;
    expect_201(json_of(second).await);
    app.providers
        .simulation("vendorA")
        .unwrap()
        .set(Simulation {
            error_rate: 1.0,
            ..Simulation::default()
        });
    let fallback = json_of(send(&app, "acme", &s1, "u-3", "Are you there?").await).await;
    assert_eq!(fallback["metadata"]["providerUsed"], "vendorB");
    expect_201(fallback);
    app.providers
        .simulation("vendorB")
        .unwrap()
        .set(Simulation {
            error_rate: 1.0,
            ..Simulation::default()
        });
    let failed = send(&app, "acme", &s2, "u-4", "Anyone?").await;
    assert_eq!(failed.status(), 503);
    app.providers
        .simulation("vendorA")
        .unwrap()
        .set(Simulation::default());
    let retried = send(&app, "acme", &s2, "u-4", "Anyone?").await;
    assert_eq!(retried.status(), 201);
    expect_201(json_of(retried).await);
    app.providers
        .simulation("vendorB")
        .unwrap()
        .set(Simulation::default());
    // Another tenant's usage stays its own.
    let other_agent = agent(&app, "globex", "Globex bot", "vendorA", "vendorB").await;
    let other = create_session(&app, "globex", &other_agent).await;
    assert_eq!(
        send(&app, "globex", &other, "g-1", "Hi").await.status(),
        201
    );

    settled(&app).await;
    // A rebuild of the usage projection changes nothing.
    let log = app.db.log().await;
    let usage = projections::all()
        .into_iter()
        .find(|p| p.name() == projections::usage::NAME)
        .unwrap();
    workers::rebuild::rebuild(&log, usage.as_ref(), 3, |_, _| {})
        .await
        .unwrap();
    let report = projections::usage::verify(&log, 50).await.unwrap();
    assert_eq!(report.mismatches, Vec::new());
    assert_eq!(
        report.replies, 5,
        "4 for acme, 1 for globex; no replay, no failure"
    );

    let cost: u64 = billed
        .iter()
        .map(|u| u["costMicros"].as_u64().unwrap())
        .sum();
    let tokens_in: u64 = billed.iter().map(|u| u["tokensIn"].as_u64().unwrap()).sum();
    let tokens_out: u64 = billed
        .iter()
        .map(|u| u["tokensOut"].as_u64().unwrap())
        .sum();
    let rollup = json_of(
        get(
            &app,
            "acme",
            &format!("/v1/usage/rollup?{}", around_today()),
        )
        .await,
    )
    .await;
    let today = Utc::now().date_naive();
    assert_eq!(
        rollup["range"],
        json!({
            "from": (today - chrono::Duration::days(30)).to_string(),
            "to": (today + chrono::Duration::days(30)).to_string(),
        })
    );
    let totals = &rollup["totals"];
    assert_eq!(totals["messages"], 4);
    assert_eq!(totals["sessions"], 2);
    assert_eq!(totals["costMicros"], cost);
    assert_eq!(totals["tokensIn"], tokens_in);
    assert_eq!(totals["tokensOut"], tokens_out);
    assert_eq!(totals["tokensTotal"], tokens_in + tokens_out);
    assert_eq!(totals["costUsd"].as_f64().unwrap(), cost as f64 / 1e6);
    let providers: Vec<(&str, i64)> = rollup["byProvider"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["provider"].as_str().unwrap(),
                p["messages"].as_i64().unwrap(),
            )
        })
        .collect();
    // vendorA: the first reply and the retried one; vendorB: the sales reply and the fallback.
    assert_eq!(providers, [("vendorA", 2), ("vendorB", 2)]);
    let by_provider_cost: u64 = rollup["byProvider"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["costMicros"].as_u64().unwrap())
        .sum();
    assert_eq!(by_provider_cost, cost);
    let top = rollup["topAgentsByCost"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert!(top[0]["costMicros"].as_u64() >= top[1]["costMicros"].as_u64());
    let names: Vec<&str> = top
        .iter()
        .map(|a| a["agentName"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Support") && names.contains(&"Sales"));
    let globex = json_of(
        get(
            &app,
            "globex",
            &format!("/v1/usage/rollup?{}", around_today()),
        )
        .await,
    )
    .await;
    assert_eq!(globex["totals"]["messages"], 1);

    // Usage records, newest first, page by page.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/usage/events?limit=3&cursor={c}"),
            None => "/v1/usage/events?limit=3".to_string(),
        };
        let page = json_of(get(&app, "acme", &path).await).await;
        for event in page["events"].as_array().unwrap() {
            seen.push(event.clone());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    let times: Vec<&str> = seen
        .iter()
        .map(|e| e["createdAt"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    assert_eq!(
        seen.iter()
            .map(|e| e["costMicros"].as_u64().unwrap())
            .sum::<u64>(),
        cost
    );
    assert!(
        seen.iter()
            .all(|e| e["apiKey"].as_str().unwrap().starts_with("key_"))
    );
    let dated = json_of(
        get(
            &app,
            "acme",
            &format!("/v1/usage/events?{}&limit=200", around_today()),
        )
        .await,
    )
    .await;
    assert_eq!(dated["events"].as_array().unwrap().len(), 4);

    // The time series, by provider and agent, and filtered.
    let today = Utc::now().date_naive();
    let from = Utc.from_utc_datetime(&today.and_hms_opt(0, 0, 0).unwrap());
    let to = from + chrono::Duration::days(1);
    let series_path = format!(
        "/v1/usage/query?from={}&to={}&windowSize=DAY&groupBy=provider,agentId",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let series = json_of(get(&app, "acme", &series_path).await).await;
    assert_eq!(series["windowSize"], "DAY");
    assert_eq!(series["windowTimeZone"], "UTC");
    let data = series["data"].as_array().unwrap();
    assert_eq!(data.len(), 4, "two agents, each answered by both providers");
    assert_eq!(
        data.iter()
            .map(|d| d["costMicros"].as_u64().unwrap())
            .sum::<u64>(),
        cost
    );
    assert!(
        data.iter()
            .all(|d| d["groupBy"]["provider"].is_string() && d["groupBy"]["agentId"].is_string())
    );
    let filtered = json_of(
        get(
            &app,
            "acme",
            &format!("{series_path}&filter[provider]=vendorB"),
        )
        .await,
    )
    .await;
    let filtered = filtered["data"].as_array().unwrap();
    assert_eq!(filtered.len(), 2);
    assert!(
        filtered
            .iter()
            .all(|d| d["groupBy"]["provider"] == "vendorB")
    );
    let whole = json_of(
        get(
            &app,
            "acme",
            &format!(
                "/v1/usage/query?from={}&to={}",
                from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        )
        .await,
    )
    .await;
    assert_eq!(whole["data"].as_array().unwrap().len(), 1);
    assert_eq!(whole["data"][0]["sessions"], 2);
    assert_eq!(whole["data"][0]["messages"], 4);

    // CSV, for each endpoint.
    let csv = |path: String| {
        let app = &app;
        async move {
            let response = app
                .request(Method::GET, &path, "acme")
                .header("accept", "text/csv")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/csv")
            );
            response.text().await.unwrap()
        }
    };
    let rollup_csv = csv(format!("/v1/usage/rollup?{}", around_today())).await;
    let lines: Vec<&str> = rollup_csv.lines().collect();
    assert_eq!(
        lines[0],
        "scope,id,name,sessions,messages,tokensIn,tokensOut,tokensTotal,costUsd"
    );
    let total: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(total[0], "total");
    assert_eq!(total[4], "4");
    assert_eq!(
        total[8],
        format!("{}.{:06}", cost / 1_000_000, cost % 1_000_000)
    );
    assert_eq!(lines.len(), 1 + 1 + 2 + 2);
    let events_csv = csv("/v1/usage/events".into()).await;
    assert_eq!(events_csv.lines().count(), 5);
    assert!(events_csv.starts_with("id,createdAt,sessionId,agentId,provider,model,apiKey,"));
    let series_csv = csv(series_path.clone()).await;
    assert!(series_csv.starts_with("windowStart,windowEnd,provider,agentId,sessions,"));
    assert_eq!(series_csv.lines().count(), 5);

    // Analysts read usage; writers do not.
    let analyst = app
        .request(Method::POST, "/v1/api-keys", "acme")
        .json(&json!({"name": "analyst", "roles": ["analyst"]}))
        .send()
        .await
        .unwrap();
    let analyst = json_of(analyst).await["apiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let seen_by_analyst = eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(
                Method::GET,
                &format!("/v1/usage/rollup?{}", around_today()),
                &analyst,
            )
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    assert_eq!(json_of(seen_by_analyst).await["totals"]["messages"], 4);
    let writer = app
        .request(Method::POST, "/v1/api-keys", "acme")
        .json(&json!({"name": "writer", "roles": ["writer"]}))
        .send()
        .await
        .unwrap();
    let writer = json_of(writer).await["apiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = eventually(Duration::from_secs(10), || async {
        let response = app
            .with_key(Method::GET, "/v1/usage/events", &writer)
            .send()
            .await
            .ok()?;
        (response.status() != 401).then_some(response)
    })
    .await;
    assert_eq!(error_code(refused).await, (403, "FORBIDDEN".into()));
}
both_backends!(
    usage_is_exact_after_a_mixed_workload,
    usage_is_exact_after_a_mixed_workload
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_error_is_a_clear_400() {
    let app = spawn_app_with(Backend::Sqlite, quick).await;
    let cases = [
        "/v1/usage/rollup",
        "/v1/usage/rollup?from=2026-01-01",
        "/v1/usage/rollup?from=2026-13-01&to=2026-12-31",
        "/v1/usage/rollup?from=yesterday&to=2026-01-02",
        "/v1/usage/rollup?from=2026-02-01&to=2026-01-01",
        "/v1/usage/rollup?from=2024-01-01&to=2026-01-01",
        "/v1/usage/rollup?from=2026-01-01&to=2026-01-02&colour=red",
        "/v1/usage/rollup?from=2026-01-01&from=2026-01-02&to=2026-01-03",
        "/v1/usage/events?limit=0",
        "/v1/usage/events?limit=1001",
        "/v1/usage/events?cursor=%%%",
        "/v1/usage/events?from=2026-01-01",
        "/v1/usage/query",
        "/v1/usage/query?from=2026-01-01",
        "/v1/usage/query?from=2026-01-01T00:30:00Z",
        "/v1/usage/query?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/v1/usage/query?from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/v1/usage/query?from=2026-01-01T00:00:00Z&windowSize=WEEK",
        "/v1/usage/query?from=2026-01-01T00:00:00Z&windowTimeZone=Mars/Olympus",
        "/v1/usage/query?from=2026-01-01T00:00:00Z&to=2026-01-05T00:00:00Z&windowSize=DAY&windowTimeZone=Asia/Kolkata",
        "/v1/usage/query?from=2026-01-01T00:00:00Z&groupBy=provider,colour",
        "/v1/usage/query?from=2026-01-01T00:00:00Z&filter[colour]=red",
        "/v1/usage/query?from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&windowSize=HOUR",
    ];
    for path in cases {
        let (status, code) = error_code(get(&app, "acme", path).await).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "INVALID_PARAMETER"),
            "{path}"
        );
    }
    // Valid edge cases.
    for path in [
        "/v1/usage/rollup?from=2026-01-01&to=2026-01-01",
        "/v1/usage/rollup?from=2025-01-01&to=2026-01-01",
        "/v1/usage/query?from=2026-01-01T00:00:00Z&to=2026-01-05T00:00:00Z&windowSize=DAY&windowTimeZone=Asia/Tokyo",
        "/v1/usage/query?from=2026-01-01T00:00:00%2B01:00&to=2026-01-02T00:00:00Z&groupBy=apiKey&groupBy=model",
    ] {
        assert_eq!(get(&app, "acme", path).await.status(), 200, "{path}");
    }
}

/// Appends one billed reply for `tenant` at `at` (as an import would), in a session of its
/// own.
async fn reply_at(log: &eventlog::EventLog, tenant: &str, at: DateTime<Utc>, tokens: u64) {
    let session = format!("ses_at{}", at.timestamp());
    replies_in(log, tenant, &session, &[(at, tokens)]).await;
}

/// Appends a new session `session` of `tenant` with one billed reply (and the message it
/// answers) at each time given, with its input tokens, as an import would.
async fn replies_in(
    log: &eventlog::EventLog,
    tenant: &str,
    session: &str,
    replies: &[(DateTime<Utc>, u64)],
) {
    let tenant = TenantId::parse(tenant).unwrap();
    let price = Price {
        micro_usd_per_1k_tokens: 2000,
    };
    let mut events = vec![(
        replies[0].0,
        SessionEvent::SessionCreated {
            id: session.to_string(),
            agent_id: "agt_dst".into(),
            customer_id: None,
            metadata: Default::default(),
        },
    )];
    for (n, &(at, tokens)) in replies.iter().enumerate() {
        events.push((
            at,
            SessionEvent::UserMessageRecorded {
                session_id: session.to_string(),
                message_id: format!("{session}-m{n}"),
                content: "hi".into(),
            },
        ));
        events.push((
            at,
            SessionEvent::AssistantMessageRecorded {
                session_id: session.to_string(),
                reply: AssistantReply {
                    message_id: format!("{session}-r{n}").into(),
                    reply_to: format!("{session}-m{n}").into(),
                    agent_id: "agt_dst".into(),
                    content: "hello".into(),
                    provider: "vendorA".into(),
                    model: "vendor-a-1".into(),
                    tokens_in: tokens,
                    tokens_out: 0,
                    cost_micros: price.cost_micros(tokens, 0).unwrap(),
                    price,
                    fallback_used: false,
                    streamed: false,
                    client_disconnected: false,
                    incomplete: false,
                },
            },
        ));
    }
    let events = events
        .iter()
        .map(|(at, e)| NewEvent {
            recorded_at: Some(*at),
            ..NewEvent::from_domain(e).unwrap()
        })
        .collect();
    log.append(&[StreamAppend {
        stream: StreamId::new(tenant.clone(), "Session", session),
        expected_version: 0,
        events,
        metadata: EventMetadata::new(tenant, "key_import", "import", "ImportUsage"),
    }])
    .await
    .unwrap();
}

/// Many replies applied by the usage projector in one batch: replies that share an hour, a
/// day and a session are summed into one row each; the batch applied a second time changes
/// nothing; a reply dated beyond the year 9999 (which an import may carry) is counted like
/// any other. `usage verify` recomputes every table from the log and compares.
async fn a_batch_of_replies_is_summed_once(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    // As the gateway keeps it: with the spend, which `usage verify` checks too.
    let log = eventlog::EventLog::with_inline(
        db.log().await.db().clone(),
        Vec::new(),
        vec![std::sync::Arc::new(projections::usage::SpendProjection)],
    );
    let utc = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let ten = utc("2026-05-01T10:00:00Z");
    let minutes = |m: i64| ten + chrono::Duration::minutes(m);
    replies_in(
        &log,
        "acme",
        "ses_a",
        &[(minutes(1), 100), (minutes(2), 200), (minutes(70), 400)],
    )
    .await;
    replies_in(
        &log,
        "acme",
        "ses_b",
        &[(minutes(3), 1000), (minutes(1500), 2000)],
    )
    .await;
    replies_in(&log, "globex", "ses_c", &[(minutes(4), 7)]).await;
    let usage = projections::all()
        .into_iter()
        .find(|p| p.name() == projections::usage::NAME)
        .unwrap();
    let shared = |events: Vec<eventlog::RecordedEvent>| -> Vec<_> {
        events.into_iter().map(std::sync::Arc::new).collect()
    };
    let events = shared(log.read_after(eventlog::Cursor::START, 500).await.unwrap());
    for _ in 0..2 {
        let mut tx = log.db().begin().await.unwrap();
        usage
            .apply(&mut tx, projections::Target::Live, &events)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(
        rollup_rows(&log, "usage_hourly").await,
        [
            ("acme".into(), ten, 3, 1300),
            ("acme".into(), minutes(60), 1, 400),
            ("acme".into(), minutes(1500), 1, 2000),
            ("globex".into(), ten, 1, 7),
        ]
    );
    let may = |day: u32| Utc.with_ymd_and_hms(2026, 5, day, 0, 0, 0).unwrap();
    assert_eq!(
        rollup_rows(&log, "usage_daily").await,
        [
            ("acme".into(), may(1), 4, 1700),
            ("acme".into(), may(2), 1, 2000),
            ("globex".into(), may(1), 1, 7),
        ]
    );
    assert_eq!(
        session_rows(&log, "usage_sessions").await,
        [
            ("acme".into(), ten, "ses_a".into()),
            ("acme".into(), ten, "ses_b".into()),
            ("acme".into(), minutes(60), "ses_a".into()),
            ("acme".into(), minutes(1500), "ses_b".into()),
            ("globex".into(), ten, "ses_c".into()),
        ]
    );
    assert_eq!(
        session_rows(&log, "usage_session_days").await,
        [
            ("acme".into(), may(1), "ses_a".into()),
            ("acme".into(), may(1), "ses_b".into()),
            ("acme".into(), may(2), "ses_b".into()),
            ("globex".into(), may(1), "ses_c".into()),
        ]
    );

    // A reply of the year 10,000 beside one of today, in the batch after.
    let far = utc("9999-12-31T23:30:00Z") + chrono::Duration::hours(1);
    replies_in(
        &log,
        "acme",
        "ses_far",
        &[(far, 5), (utc("2026-05-01T10:30:00Z"), 11)],
    )
    .await;
    let cursor = events.last().unwrap().cursor;
    let later = shared(log.read_after(cursor, 500).await.unwrap());
    let mut tx = log.db().begin().await.unwrap();
    usage
        .apply(&mut tx, projections::Target::Live, &later)
        .await
        .unwrap();
    let last = later.last().unwrap().cursor;
    projections::checkpoints::write_in(&mut tx, projections::usage::NAME, last)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let report = projections::usage::verify(&log, 50).await.unwrap();
    assert_eq!(report.mismatches, Vec::new());
    assert_eq!(report.replies, 8);
    let far_rows: Vec<(DateTime<Utc>, i64)> = sqlx_rows(
        &log,
        "SELECT bucket, tokens_in FROM usage_hourly WHERE tokens_in = 5",
    )
    .await;
    assert_eq!(
        far_rows,
        [(utc("9999-12-31T23:00:00Z") + chrono::Duration::hours(1), 5)]
    );
}
both_backends!(
    a_batch_of_replies_is_summed_once,
    a_batch_of_replies_is_summed_once
);

/// A rollup table's tenant, bucket, messages and input tokens, row by row in key order.
async fn rollup_rows(
    log: &eventlog::EventLog,
    table: &str,
) -> Vec<(String, DateTime<Utc>, i64, i64)> {
    let sql = format!(
        "SELECT tenant_id, bucket, messages, tokens_in FROM {table} ORDER BY tenant_id, bucket"
    );
    sqlx_rows(log, &sql).await
}

/// A session activity table's tenant, bucket and session, row by row in key order.
async fn session_rows(
    log: &eventlog::EventLog,
    table: &str,
) -> Vec<(String, DateTime<Utc>, String)> {
    let sql = format!(
        "SELECT tenant_id, bucket, session_id FROM {table} ORDER BY tenant_id, bucket, session_id"
    );
    sqlx_rows(log, &sql).await
}

/// The rows `sql` selects, as `T`s.
async fn sqlx_rows<T: eventlog::sql::Record>(log: &eventlog::EventLog, sql: &str) -> Vec<T> {
    log.db()
        .fetch_all_as::<T>(eventlog::Statement::new(sql))
        .await
        .unwrap()
}

async fn day_windows_follow_daylight_saving_time(backend: Backend) {
    let app = spawn_app_with(backend, quick).await;
    let log = app.db.log().await;
    // Europe/Berlin moved from +01:00 to +02:00 at 2026-03-29T01:00:00Z: that local day has
    // 23 hours, from 2026-03-28T23:00Z to 2026-03-29T22:00Z.
    let utc = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    reply_at(&log, "acme", utc("2026-03-28T22:30:00Z"), 1000).await; // 28th, 23:30 local
    reply_at(&log, "acme", utc("2026-03-28T23:30:00Z"), 2000).await; // 29th, 00:30 local
    reply_at(&log, "acme", utc("2026-03-29T21:30:00Z"), 3000).await; // 29th, 23:30 local
    reply_at(&log, "acme", utc("2026-03-29T22:30:00Z"), 4000).await; // 30th, 00:30 local
    log.db().close().await;
    settled(&app).await;

    let query = "/v1/usage/query?from=2026-03-27T23:00:00Z&to=2026-03-30T22:00:00Z&windowSize=DAY&windowTimeZone=Europe/Berlin";
    let body = json_of(get(&app, "acme", query).await).await;
    let windows: Vec<(String, String, i64)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["windowStart"].as_str().unwrap().to_string(),
                d["windowEnd"].as_str().unwrap().to_string(),
                d["tokensIn"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        windows,
        [
            (
                "2026-03-28T00:00:00+01:00".into(),
                "2026-03-29T00:00:00+01:00".into(),
                1000
            ),
            (
                "2026-03-29T00:00:00+01:00".into(),
                "2026-03-30T00:00:00+02:00".into(),
                5000
            ),
            (
                "2026-03-30T00:00:00+02:00".into(),
                "2026-03-31T00:00:00+02:00".into(),
                4000
            ),
        ]
    );
    assert_eq!(body["data"][1]["sessions"], 2);
    // In UTC the same replies fall into other days.
    let utc_days = json_of(
        get(
            &app,
            "acme",
            "/v1/usage/query?from=2026-03-28T00:00:00Z&to=2026-03-31T00:00:00Z&windowSize=DAY",
        )
        .await,
    )
    .await;
    let tokens: Vec<i64> = utc_days["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tokensIn"].as_i64().unwrap())
        .collect();
    assert_eq!(tokens, [3000, 7000]);
    // Hours are physical: the local day of the change has 23 hourly windows' worth of range.
    let hours = json_of(
        get(
            &app,
            "acme",
            "/v1/usage/query?from=2026-03-28T23:00:00Z&to=2026-03-29T22:00:00Z&windowSize=HOUR&windowTimeZone=Europe/Berlin",
        )
        .await,
    )
    .await;
    let starts: Vec<&str> = hours["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["windowStart"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts,
        ["2026-03-29T00:00:00+01:00", "2026-03-29T23:00:00+02:00"]
    );
    // A month in New York, across its own change (2026-03-08).
    let month = json_of(
        get(
            &app,
            "acme",
            "/v1/usage/query?from=2026-03-01T05:00:00Z&to=2026-04-01T04:00:00Z&windowSize=MONTH&windowTimeZone=America/New_York",
        )
        .await,
    )
    .await;
    assert_eq!(month["data"][0]["windowStart"], "2026-03-01T00:00:00-05:00");
    assert_eq!(month["data"][0]["windowEnd"], "2026-04-01T00:00:00-04:00");
    assert_eq!(month["data"][0]["tokensIn"], 10_000);
    // The rollup by UTC dates sees the same totals.
    let rollup = json_of(
        get(
            &app,
            "acme",
            "/v1/usage/rollup?from=2026-03-28&to=2026-03-29",
        )
        .await,
    )
    .await;
    assert_eq!(rollup["totals"]["tokensIn"], 10_000);
    assert_eq!(rollup["totals"]["messages"], 4);
    assert_eq!(rollup["totals"]["costMicros"], 20_000);
}
both_backends!(
    day_windows_follow_daylight_saving_time,
    day_windows_follow_daylight_saving_time
);

async fn hard_budgets_hold_under_concurrency_and_soft_ones_tell(backend: Backend) {
    let names = Names::new();
    let app = spawn_app_with(backend, |settings| {
        quick(settings);
        names.apply(settings, &nats_url());
    })
    .await;
    let support = agent(&app, "acme", "Support", "vendorA", "vendorB").await;
    let warm = create_session(&app, "acme", &support).await;
    // One reply tells what a reply costs (the simulated vendors are deterministic).
    let first = json_of(send(&app, "acme", &warm, "b-0", "Same question").await).await;
    let cost = first["metadata"]["usage"]["costMicros"].as_u64().unwrap();

    // A hard tenant budget with room for five more replies; a soft agent budget already
    // reached by the sixth.
    let allowed = 5;
    let limit = cost * (allowed + 1);
    let set = app
        .request(Method::PUT, "/v1/budgets/tenant", "acme")
        .json(&json!({"monthlyLimitUsd": format!("{}.{:06}", limit / 1_000_000, limit % 1_000_000), "enforcement": "hard"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let set = json_of(set).await;
    assert_eq!(set["budget"]["monthlyLimitMicros"], limit);
    assert_eq!(set["budget"]["spentMicros"], cost);
    let soft = app
        .request(
            Method::PUT,
            &format!("/v1/budgets/agents/{support}"),
            "acme",
        )
        .json(&json!({"monthlyLimitUsd": limit as f64 / 1e6 / 2.0, "enforcement": "soft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(soft.status(), 200);

    // 50 concurrent sends, each in its own session so none waits for another's stream.
    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(create_session(&app, "acme", &support).await);
    }
    let sends = sessions.iter().enumerate().map(|(i, s)| {
        let app = &app;
        async move { send(app, "acme", s, &format!("b-{}", i + 1), "Same question").await }
    });
    let responses = futures::future::join_all(sends).await;
    let mut accepted = 0u64;
    for response in responses {
        match response.status().as_u16() {
            201 => accepted += 1,
            _ => {
                let (status, code) = error_code(response).await;
                assert_eq!((status, code.as_str()), (402, "BUDGET_EXCEEDED"));
            }
        }
    }
    assert!(
        accepted >= allowed,
        "no message refused while the budget had room: {accepted} accepted"
    );
    // And the burst never spends past the limit by more than one reply: every reply costs
    // `cost` here, the warm-up's included.
    assert!(
        cost * (accepted + 1) <= limit + cost,
        "{accepted} accepted: {} spent of {limit}",
        cost * (accepted + 1)
    );
    // Nothing is accepted once the crossing is committed.
    let late = create_session(&app, "acme", &support).await;
    let refused = send(&app, "acme", &late, "b-late", "Same question").await;
    let body = json_of(refused).await;
    assert_eq!(body["error"]["code"], "BUDGET_EXCEEDED");
    assert_eq!(body["error"]["details"]["scope"], "tenant");
    let spent = body["error"]["details"]["spentMicros"].as_u64().unwrap();
    // Exact accounting: the spend is every accepted reply, once.
    assert_eq!(spent, cost * (accepted + 1));

    // Each budget told of its crossing once, and it went out on NATS.
    let log = app.db.log().await;
    let thresholds = |scope: &'static str| {
        let log = log.clone();
        async move {
            let stream = StreamId::new(TenantId::parse("acme").unwrap(), "Budget", scope);
            log.load(&stream, 0)
                .await
                .unwrap()
                .iter()
                .filter(|e| e.event_type == "BudgetThresholdReached")
                .count()
        }
    };
    assert_eq!(thresholds("tenant").await, 1);
    let agent_scope: &'static str = Box::leak(format!("agent:{support}").into_boxed_str());
    assert_eq!(thresholds(agent_scope).await, 1);
    let published = eventually(Duration::from_secs(20), || async {
        let subjects: Vec<String> = names
            .messages()
            .await
            .iter()
            .map(|m| m.subject.to_string())
            .filter(|s| s.contains(".BudgetThresholdReached."))
            .collect();
        (subjects.len() == 2).then_some(subjects)
    })
    .await;
    assert!(
        published
            .iter()
            .all(|s| s.contains(".acme.Budget.BudgetThresholdReached.")),
        "{published:?}"
    );

    // Analysts see the budgets with their spend; raising the limit lets messages through.
    let listed = json_of(get(&app, "acme", "/v1/budgets").await).await;
    let listed = listed["budgets"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .any(|b| b["scope"] == "tenant" && b["spentMicros"] == spent)
    );
    assert!(
        listed
            .iter()
            .any(|b| b["scope"] == "agent" && b["agentId"] == support.as_str())
    );
    let raised = app
        .request(Method::PUT, "/v1/budgets/tenant", "acme")
        .json(&json!({"monthlyLimitUsd": "1000", "enforcement": "hard"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raised.status(), 200);
    assert_eq!(
        send(&app, "acme", &late, "b-late", "Same question")
            .await
            .status(),
        201
    );
    let removed = app
        .request(Method::DELETE, "/v1/budgets/tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let again = app
        .request(Method::DELETE, "/v1/budgets/tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(again).await, "budget");
    let bad = app
        .request(Method::PUT, "/v1/budgets/tenant", "acme")
        .json(&json!({"monthlyLimitUsd": "0.0000001", "enforcement": "hard"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad).await, (400, "VALIDATION_ERROR".into()));
    // A limit beyond what the signed 64-bit sums hold is refused, not wrapped.
    for huge in ["1000000000000.000001", "18446744073709"] {
        let bad = app
            .request(Method::PUT, "/v1/budgets/tenant", "acme")
            .json(&json!({"monthlyLimitUsd": huge, "enforcement": "hard"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(bad).await,
            (400, "VALIDATION_ERROR".into()),
            "{huge}"
        );
    }
    let unknown = app
        .request(Method::PUT, "/v1/budgets/agents/agt_nope", "acme")
        .json(&json!({"monthlyLimitUsd": "1", "enforcement": "soft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_found(unknown).await, "agent");

    settled(&app).await;
    let report = projections::usage::verify(&log, 100).await.unwrap();
    assert_eq!(report.mismatches, Vec::new());
    names.delete().await;
}
both_backends!(
    hard_budgets_hold_under_concurrency_and_soft_ones_tell,
    hard_budgets_hold_under_concurrency_and_soft_ones_tell
);

/// Runs `gateway usage verify [--repair]` on the app's database: its exit (Ok or the error)
/// and what it printed, as JSON.
async fn usage_verify(app: &TestApp, repair: bool) -> (Result<(), String>, Value) {
    use clap::Parser;
    let mut args = vec!["gateway", "usage", "verify"];
    if repair {
        args.push("--repair");
    }
    let cli = cli::Cli::try_parse_from(args).unwrap();
    let mut out = Vec::new();
    let result = cli::run(cli, app.db.settings(), &mut out)
        .await
        .map_err(|e| e.to_string());
    (result, serde_json::from_slice(&out).unwrap())
}

/// A difference planted behind the gateway's back is found, said as JSON objects, and
/// repaired from the log.
async fn usage_verify_finds_and_repairs_planted_differences(backend: Backend) {
    let app = spawn_app_with(backend, quick).await;
    let agent = agent(&app, "acme", "Verified", "vendorA", "vendorB").await;
    let session = create_session(&app, "acme", &agent).await;
    for i in 0..3 {
        let sent = send(&app, "acme", &session, &format!("v-{i}"), "Count me").await;
        assert_eq!(sent.status(), 201);
    }
    settled(&app).await;
    let (clean, report) = usage_verify(&app, false).await;
    assert_eq!(clean, Ok(()), "{report}");
    assert_eq!(report["mismatches"], json!([]));
    assert_eq!(report["replies"], 3);

    let log = app.db.log().await;
    let plant = |sql: &'static str| {
        let log = &log;
        async move {
            let mut tx = log.db().begin().await.unwrap();
            tx.execute(eventlog::Statement::new(sql)).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    plant("UPDATE usage_daily SET cost_micros = cost_micros + 1").await;
    plant("UPDATE usage_spend SET spent_micros = spent_micros + 5 WHERE scope = 'tenant'").await;
    plant(
        "DELETE FROM usage_records WHERE message_id = \
         (SELECT MIN(message_id) FROM usage_records)",
    )
    .await;

    let (failed, report) = usage_verify(&app, false).await;
    let error = failed.unwrap_err();
    assert!(error.contains("difference(s)"), "{error}");
    let mismatches = report["mismatches"].as_array().unwrap();
    let daily = mismatches
        .iter()
        .find(|m| m["table"] == "usage_daily")
        .expect("the rollup change is found");
    assert_eq!(daily["column"], "costMicros");
    assert_eq!(daily["differenceMicros"], 1);
    assert_eq!(daily["key"]["tenantId"], "acme");
    assert_eq!(
        daily["tableValue"].as_i64().unwrap() - daily["log"].as_i64().unwrap(),
        1
    );
    let spend = mismatches
        .iter()
        .find(|m| m["table"] == "usage_spend")
        .expect("the spend change is found");
    assert_eq!(spend["differenceMicros"], 5);
    assert_eq!(spend["key"]["scope"], "tenant");
    let records = mismatches
        .iter()
        .find(|m| m["table"] == "usage_records")
        .expect("the deleted record is found");
    assert_eq!(records["column"], "messages");
    assert_eq!(records["log"], 3);
    assert_eq!(records["tableValue"], 2);

    let (repaired, report) = usage_verify(&app, true).await;
    assert_eq!(repaired, Ok(()), "{report}");
    assert!(
        !report["before"]["mismatches"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(report["after"]["mismatches"], json!([]));
    let (clean, _) = usage_verify(&app, false).await;
    assert_eq!(clean, Ok(()));
    log.db().close().await;
}
both_backends!(
    usage_verify_finds_and_repairs_planted_differences,
    usage_verify_finds_and_repairs_planted_differences
);

/// A message whose providers all fail gives its budget reservation back: the next message is
/// admitted at once instead of waiting for it.
async fn a_failed_message_releases_its_budget_reservation(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        quick(s);
        s.budget_wait_ms = 300;
    })
    .await;
    let support = agent(&app, "acme", "Budgeted", "vendorA", "vendorB").await;
    let set = app
        .request(Method::PUT, "/v1/budgets/tenant", "acme")
        // Room for one reservation (about 3,100 µ$: 1,024 tokens of output at vendorB's
        // $0.003), not for two.
        .json(&json!({"monthlyLimitUsd": "0.005", "enforcement": "hard"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let session = create_session(&app, "acme", &support).await;
    for vendor in ["vendorA", "vendorB"] {
        app.providers.simulation(vendor).unwrap().set(Simulation {
            error_rate: 1.0,
            ..Simulation::default()
        });
    }
    let failed = send(&app, "acme", &session, "r-1", "Anyone?").await;
    assert_eq!(
        error_code(failed).await,
        (503, "ALL_PROVIDERS_FAILED".into())
    );
    for vendor in ["vendorA", "vendorB"] {
        app.providers
            .simulation(vendor)
            .unwrap()
            .set(Simulation::default());
    }
    // Another message, concurrently with nothing: admitted, not held back by a leaked
    // reservation (which would answer BUDGET_CONTENDED after 300 ms).
    let other = create_session(&app, "acme", &support).await;
    let sent = send(&app, "acme", &other, "r-2", "Hello").await;
    assert_eq!(sent.status(), 201);
    // And the failed one, retried with its key, is admitted and answered.
    let retried = send(&app, "acme", &session, "r-1", "Anyone?").await;
    assert_eq!(retried.status(), 201);
}
both_backends!(
    a_failed_message_releases_its_budget_reservation,
    a_failed_message_releases_its_budget_reservation
);
