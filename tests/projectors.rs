//! Each real projector on its own (events in, rows out), and the use cases run without HTTP
//! (a record write, a message with its replay).
//!
//! The events come from the same commands and use cases the gateway runs; each projector is
//! then applied alone (`workers::runner::run_batch`), so a row a test finds was written by
//! that projector and no other.

use std::sync::Arc;

use app::entity_writes::{self, OpKind, Operation, WriteFailure};
use cqrs_es::Aggregate;
use domain::agent::{Agent, AgentCommand, AgentConfig, AgentServices};
use domain::entity_type::{EntityType, EntityTypeCommand, Schema};
use domain::metadata::EventMetadata;
use domain::names::{EntityId, EntityTypeName, TenantId};
use domain::session::{Session, SessionCommand};
use eventlog::{EventLog, StreamId};
use projections::{Projector, Target};
use serde_json::{Map, Value, json};
use workers::runner::{self, BatchOutcome};

use crate::both_backends;
use crate::helpers::{Backend, TestDb};

/// The real projector named `name`.
fn projector(name: &str) -> Arc<dyn Projector> {
    projections::all()
        .into_iter()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| panic!("no projector {name}"))
}

/// Applies everything committed to the log so far to projector `name` alone; returns how many
/// events it read. On PostgreSQL an event becomes readable once every older transaction of the
/// cluster has ended (other tests hold some open), so an idle batch before the last committed
/// event is waited out, not taken for the end.
async fn project(log: &EventLog, name: &str) -> u64 {
    let projector = projector(name);
    let target = log.last_committed().await.expect("the log's end");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut events = 0;
    loop {
        match runner::run_batch(log, projector.as_ref(), Target::Live, name, 500)
            .await
            .expect("the batch applies")
        {
            BatchOutcome::Applied { events: n, .. } => events += n as u64,
            BatchOutcome::Idle => {
                let at = projections::checkpoints::read(log.db(), name)
                    .await
                    .expect("the checkpoint")
                    .unwrap_or(eventlog::Cursor::START);
                if at >= target {
                    return events;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} did not reach the log's end"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            BatchOutcome::Busy => panic!("no other runner holds {name}"),
        }
    }
}

fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn metadata(command: &str) -> EventMetadata {
    EventMetadata::new(tenant(), "test", "req_test", command)
}

async fn tenant_and_key_rows(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let clock: domain::api_key::ApiKeyServices = Arc::new(app::SystemClock);
    let created = app::bootstrap::create_tenant(
        &log,
        &clock,
        tenant(),
        "Acme Inc.".into(),
        Some(600),
        &metadata("CreateTenant"),
        None,
        |_, _| eventlog::idempotency::StoredResponse {
            status: 201,
            headers: Vec::new(),
            body: Vec::new(),
        },
    )
    .await
    .unwrap();

    // Before its projector runs, the read model knows nothing.
    assert!(
        projections::tenants::get(log.db(), "acme")
            .await
            .unwrap()
            .is_none()
    );
    assert!(project(&log, "tenants").await > 0);
    let row = projections::tenants::get(log.db(), "acme")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            row.name.as_str(),
            row.status.as_str(),
            row.rate_limit_per_minute
        ),
        ("Acme Inc.", "active", Some(600))
    );

    project(&log, "api_keys").await;
    let credential = projections::api_keys::credential(log.db(), &created.key.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(credential.tenant_id, "acme");
    assert_eq!(credential.roles, vec![domain::roles::Role::Admin]);
    assert_eq!(credential.secret_hash, created.key.secret_hash);
    assert!(!credential.revoked);
    assert_eq!(
        credential.tenant,
        Some(("active".to_string(), Some(600))),
        "the tenant's status and limit are read with the key"
    );
}
both_backends!(
    tenants_and_api_keys_project_tenants_and_credentials,
    tenant_and_key_rows
);

fn config() -> AgentConfig {
    AgentConfig {
        name: "Support".into(),
        description: None,
        primary_provider: "vendorA".into(),
        fallback_provider: Some("vendorB".into()),
        model: None,
        models: Default::default(),
        system_prompt: Some("Be brief.".into()),
        temperature: None,
        max_tokens: None,
    }
}

/// Agent `agt_1` (the [`config`]) and its session `ses_1` of customer `customer`.
async fn agent_and_session(log: &EventLog, customer: Option<&str>) -> StreamId {
    let services = AgentServices {
        providers: vec!["vendorA".into(), "vendorB".into()],
    };
    log.execute::<Agent>(
        &StreamId::new(tenant(), Agent::TYPE, "agt_1"),
        AgentCommand::CreateAgent {
            id: "agt_1".into(),
            config: config(),
        },
        &services,
        &metadata("CreateAgent"),
    )
    .await
    .unwrap();
    let session = StreamId::new(tenant(), Session::TYPE, "ses_1");
    log.execute::<Session>(
        &session,
        SessionCommand::CreateSession {
            id: "ses_1".into(),
            agent_id: "agt_1".into(),
            customer_id: customer.map(str::to_string),
            metadata: Map::new(),
            agent_status: domain::agent::AgentStatus::Active,
        },
        &(),
        &metadata("CreateSession"),
    )
    .await
    .unwrap();
    session
}

/// The tenant's usage rollup of today (UTC).
async fn rollup_today(log: &EventLog) -> projections::usage::Rollup {
    let start = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let selection = projections::usage::Selection {
        tenant_id: "acme",
        from: start,
        to: start + chrono::Duration::days(1),
        filters: &[],
    };
    projections::usage::rollup(log.db(), &selection)
        .await
        .unwrap()
}

async fn agent_and_session_rows(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let session = agent_and_session(&log, Some("cus_9")).await;
    let agent = StreamId::new(tenant(), Agent::TYPE, "agt_1");
    let services = AgentServices {
        providers: vec!["vendorA".into(), "vendorB".into()],
    };
    log.execute::<Session>(
        &session,
        SessionCommand::RecordUserMessage {
            message_id: "msg_1".into(),
            content: "Hello".into(),
            agent_status: domain::agent::AgentStatus::Active,
        },
        &(),
        &metadata("RecordUserMessage"),
    )
    .await
    .unwrap();
    log.execute::<Agent>(
        &agent,
        AgentCommand::ArchiveAgent {
            expected_version: Some(1),
        },
        &services,
        &metadata("ArchiveAgent"),
    )
    .await
    .unwrap();

    project(&log, "agents").await;
    let row = projections::agents::get(log.db(), "acme", "agt_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "archived");
    assert_eq!(row.version, 2);
    assert_eq!(row.config, config());
    assert!(
        projections::agents::get(log.db(), "other", "agt_1")
            .await
            .unwrap()
            .is_none(),
        "another tenant does not see it"
    );

    project(&log, "sessions").await;
    let row = projections::sessions::get(log.db(), "acme", "ses_1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            row.agent_id.as_str(),
            row.customer_id.as_deref(),
            row.status.as_str(),
            row.message_count
        ),
        ("agt_1", Some("cus_9"), "active", 1)
    );
}
both_backends!(
    agents_and_sessions_project_their_rows,
    agent_and_session_rows
);

/// A record write (the use case behind `/v1/{entity}` and `_transact`), without HTTP: the
/// unique value rule spans records, and the `entities` projector writes the rows.
async fn record_writes_without_http(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let users = EntityTypeName::parse("users").unwrap();
    let schema: Schema = serde_json::from_value(json!({"fields": {
        "email": {"type": "string", "required": true, "unique": true}
    }}))
    .unwrap();
    log.execute::<EntityType>(
        &entity_writes::type_stream(&tenant(), &users),
        EntityTypeCommand::DefineEntityType {
            name: users.clone(),
            schema,
            missing_references: Vec::new(),
        },
        &(),
        &metadata("DefineEntityType"),
    )
    .await
    .unwrap();
    let create = |id: &str, email: &str| {
        let data = json!({ "email": email });
        Operation::new(
            OpKind::Create,
            users.clone(),
            Some(EntityId::parse(id).unwrap()),
            data.as_object().unwrap().clone(),
            None,
        )
    };
    // The response says how many results it was rendered from.
    let render = |results: &[entity_writes::OpResult], _: &eventlog::unit_of_work::Committed| {
        eventlog::idempotency::StoredResponse {
            status: 201,
            headers: Vec::new(),
            body: results.len().to_string().into_bytes(),
        }
    };
    let (committed, response) = entity_writes::write(
        &log,
        &tenant(),
        &[create("u1", "a@example.com")],
        &metadata("CreateEntity"),
        None,
        render,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.body, b"1");
    assert!(committed.appended.last_cursor().is_some());

    let taken = entity_writes::write(
        &log,
        &tenant(),
        &[create("u2", "a@example.com")],
        &metadata("CreateEntity"),
        None,
        render,
    )
    .await;
    match taken {
        Err(WriteFailure::Failed {
            error:
                app::Error::UniqueViolation {
                    field, existing_id, ..
                },
            ..
        }) => assert_eq!((field.as_str(), existing_id.as_str()), ("email", "u1")),
        Err(other) => panic!("expected a unique violation, got {other}"),
        Ok(_) => panic!("expected a unique violation, got a write"),
    }

    project(&log, "entities").await;
    let row = projections::entities::get(log.db(), "acme", "users", "u1")
        .await
        .unwrap()
        .expect("the record's row");
    assert_eq!(row.data["email"], Value::from("a@example.com"));
    assert!(
        projections::entities::get(log.db(), "acme", "users", "u2")
            .await
            .unwrap()
            .is_none(),
        "the refused record left no row"
    );
}
both_backends!(a_record_write_runs_without_http, record_writes_without_http);

/// A billed exchange on one session: the user message, a failed attempt at `vendorA`, and a
/// reply from `vendorB` (the fallback) that cost 30 micro-dollars.
async fn billed_exchange(log: &EventLog) {
    let session = StreamId::new(tenant(), Session::TYPE, "ses_2");
    let commands = [
        SessionCommand::CreateSession {
            id: "ses_2".into(),
            agent_id: "agt_2".into(),
            customer_id: None,
            metadata: Map::new(),
            agent_status: domain::agent::AgentStatus::Active,
        },
        SessionCommand::RecordUserMessage {
            message_id: "msg_u".into(),
            content: "What does it cost?".into(),
            agent_status: domain::agent::AgentStatus::Active,
        },
        SessionCommand::RecordProviderAttempt {
            message_id: "msg_u".into(),
            attempt: domain::session::ProviderAttempt {
                provider: "vendorA".into(),
                model: Some("vendor-a-1".into()),
                attempt: 1,
                status: "error".into(),
                http_status: Some(503),
                latency_ms: 12,
                error_code: Some("PROVIDER_ERROR".into()),
                retry_after_ms: None,
            },
        },
        SessionCommand::RecordProviderAttempt {
            message_id: "msg_u".into(),
            attempt: domain::session::ProviderAttempt {
                provider: "vendorB".into(),
                model: Some("vendor-b-1".into()),
                attempt: 1,
                status: "success".into(),
                http_status: Some(200),
                latency_ms: 20,
                error_code: None,
                retry_after_ms: None,
            },
        },
        SessionCommand::RecordAssistantReply(domain::session::AssistantReply {
            message_id: "msg_r".into(),
            reply_to: "msg_u".into(),
            agent_id: "agt_2".into(),
            content: "Thirty micro-dollars.".into(),
            provider: "vendorB".into(),
            model: "vendor-b-1".into(),
            tokens_in: 6,
            tokens_out: 4,
            cost_micros: 30,
            price: domain::provider::Price {
                micro_usd_per_1k_tokens: 3000,
            },
            fallback_used: true,
            streamed: false,
            client_disconnected: false,
            incomplete: false,
        }),
    ];
    for command in commands {
        let name = command.name();
        log.execute::<Session>(&session, command, &(), &metadata(name))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

async fn transcript_call_and_usage_rows(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    billed_exchange(&log).await;

    project(&log, "transcripts").await;
    let messages = projections::sessions::transcript(log.db(), "acme", "ses_2", 0, 10)
        .await
        .unwrap();
    let roles: Vec<&str> = messages.iter().map(|(_, m)| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant"]);
    let reply = &messages[1].1;
    assert_eq!(
        (reply.reply_to.as_deref(), reply.provider.as_deref()),
        (Some("msg_u"), Some("vendorB"))
    );
    let usage = reply.usage.as_ref().expect("a reply carries its usage");
    assert_eq!(
        (
            usage["costMicros"].as_u64(),
            usage["fallbackUsed"].as_bool()
        ),
        (Some(30), Some(true))
    );

    project(&log, "provider_calls").await;
    let calls = projections::sessions::provider_calls(log.db(), "acme", "ses_2")
        .await
        .unwrap();
    let seen: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.provider.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("vendorA", "error"), ("vendorB", "success")],
        "the failed attempt and the one recorded with the reply"
    );

    project(&log, "usage").await;
    let rollup = rollup_today(&log).await;
    assert_eq!(
        (
            rollup.total.messages,
            rollup.total.tokens_in,
            rollup.total.tokens_out,
            rollup.total.cost_micros,
            rollup.sessions
        ),
        (1, 6, 4, 30, 1)
    );
    assert_eq!(rollup.by_provider["vendorB"].0.cost_micros, 30);
    assert!(
        !rollup.by_provider.contains_key("vendorA"),
        "a failed attempt bills nothing"
    );
}
both_backends!(
    sessions_project_transcripts_calls_and_usage,
    transcript_call_and_usage_rows
);

async fn type_and_budget_rows(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let orders = EntityTypeName::parse("orders").unwrap();
    let schema: Schema = serde_json::from_value(json!({"fields": {
        "total": {"type": "number", "indexed": true}
    }}))
    .unwrap();
    log.execute::<EntityType>(
        &entity_writes::type_stream(&tenant(), &orders),
        EntityTypeCommand::DefineEntityType {
            name: orders,
            schema: schema.clone(),
            missing_references: Vec::new(),
        },
        &(),
        &metadata("DefineEntityType"),
    )
    .await
    .unwrap();
    let budget = app::messaging::budget_stream(&tenant(), domain::budget::TENANT_SCOPE);
    log.execute::<domain::budget::Budget>(
        &budget,
        domain::budget::BudgetCommand::SetBudget {
            scope: domain::budget::TENANT_SCOPE.into(),
            monthly_limit_micros: 25_000_000,
            enforcement: domain::budget::Enforcement::Hard,
        },
        &(),
        &metadata("SetBudget"),
    )
    .await
    .unwrap();

    project(&log, "entity_types").await;
    let types = projections::entity_types::list(log.db(), "acme")
        .await
        .unwrap();
    assert_eq!(types.len(), 1);
    assert_eq!((types[0].name.as_str(), types[0].version), ("orders", 1));
    assert_eq!(types[0].schema, schema);

    project(&log, "budgets").await;
    let budgets = projections::usage::budgets(log.db(), "acme").await.unwrap();
    assert_eq!(budgets.len(), 1);
    assert_eq!(
        (
            budgets[0].scope.as_str(),
            budgets[0].monthly_limit_micros,
            budgets[0].enforcement.as_str()
        ),
        ("tenant", 25_000_000, "hard")
    );
}
both_backends!(types_and_budgets_project_their_rows, type_and_budget_rows);

/// The services of the application as `startup` assembles them, without a server.
fn application(log: EventLog, settings: app::settings::Settings) -> app::App {
    app::App {
        providers: app::providers::from_settings(&settings).unwrap(),
        log,
        progress: projections::progress::Progress::default(),
        metrics: Arc::new(app::metrics::Metrics::default()),
        settings: Arc::new(settings),
        projectors: Arc::new(projections::all()),
        clock: Arc::new(app::SystemClock),
        relay: None,
        shutdown: tokio_util::sync::CancellationToken::new(),
        render_refusal: api::error::render_refusal,
    }
}

/// Sending a message (the use case behind `POST /v1/sessions/{id}/messages`), without HTTP:
/// the answer is billed once, and the same key replays it without asking a provider again.
async fn message_without_http(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let app = application(log.clone(), db.settings());
    agent_and_session(&log, None).await;
    let context = app::Context {
        tenant: tenant(),
        actor: "test".into(),
        request_id: "req_1".into(),
        idempotency_key: Some("hello-1".into()),
        traceparent: None,
        operation: "send_message".into(),
        method: "POST".into(),
        target: "/v1/sessions/ses_1/messages".into(),
    };
    let send = || app::messaging::prepare(&app, context.clone(), "ses_1".into(), "Hello".into());

    let Ok(exchange) = send().await else {
        panic!("the first request runs");
    };
    let answer = exchange.answer(None, &|| false).await.unwrap();
    assert_eq!(answer.status, 201);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["message"]["role"], "assistant");
    assert_eq!(body["metadata"]["providerUsed"], "vendorA");
    let billed = body["metadata"]["usage"]["costMicros"].as_u64().unwrap();
    assert!(billed > 0);

    match send().await {
        Err(app::idempotency::Refused::Replayed(stored)) => {
            assert_eq!(stored.status, 200);
            let replay: Value = serde_json::from_slice(&stored.body).unwrap();
            assert_eq!(replay["metadata"]["idempotency"]["replayed"], true);
            assert_eq!(replay["message"]["id"], body["message"]["id"]);
        }
        Err(other) => panic!("expected a replay, got {other:?}"),
        Ok(_) => panic!("expected a replay, got a second exchange"),
    }

    // Without an idempotency key the use case refuses before anything is recorded.
    let mut keyless = context.clone();
    keyless.idempotency_key = None;
    assert!(matches!(
        app::messaging::prepare(&app, keyless, "ses_1".into(), "Hello".into()).await,
        Err(app::idempotency::Refused::Failed(
            app::Error::IdempotencyKeyRequired
        ))
    ));

    project(&log, "usage").await;
    let rollup = rollup_today(&log).await;
    assert_eq!(
        (rollup.total.messages, rollup.total.cost_micros),
        (1, billed as i64),
        "billed once"
    );
}
both_backends!(a_message_runs_without_http, message_without_http);
