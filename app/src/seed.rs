//! Bulk seeding through the command path: `gateway seed usage` (billed replies over a year)
//! and `gateway seed entities` (typed records in units of work).

use std::sync::Arc;

use anyhow::{Context, bail};
use domain::api_key::ApiKeyServices;
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use domain::roles::Role;
use serde_json::{Value, json};

use crate::bootstrap;
use crate::settings::Settings;
use crate::state::SystemClock;

/// What `gateway seed usage` loaded.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSeed {
    pub tenant: String,
    /// An analyst key of the tenant, for the query benchmarks (shown only here).
    pub analyst_key: String,
    pub records: u64,
    pub events: u64,
    pub append_seconds: f64,
    pub projection_seconds: f64,
}

/// Sessions get this many billed replies each.
const REPLIES_PER_SESSION: u64 = 10;

/// Loads `count` billed replies for `tenant` (created if absent) through the event path:
/// `SessionCreated`, `UserMessageRecorded` and `AssistantMessageRecorded` events appended in
/// batches with their times spread over the last `days` days, across `agents` agents, two
/// providers with two models each and three API keys; then runs the `usage` and `agents`
/// projectors until they have applied everything. `progress(done, total)` is called as it
/// goes.
pub async fn usage(
    settings: &Settings,
    tenant: &str,
    count: u64,
    days: i64,
    agents: usize,
    mut progress: impl FnMut(&str, u64, u64),
) -> anyhow::Result<UsageSeed> {
    use domain::agent::{Agent, AgentCommand, AgentConfig, AgentServices};
    use domain::provider::Price;
    use domain::session::{AssistantReply, SessionEvent};
    use eventlog::{NewEvent, StreamAppend, StreamId};

    let log = crate::open_log(settings).await?;
    let id = TenantId::parse(tenant)?;
    let analyst = benchmark_tenant(
        &log,
        &id,
        "usage benchmark",
        "usage-bench-analyst",
        Role::Analyst,
    )
    .await?;
    let services = AgentServices {
        providers: crate::providers::from_settings(settings)?.names(),
    };
    let mut agent_ids = Vec::new();
    for index in 0..agents.max(1) {
        let agent_id = format!("agt_seed{index:04}");
        let command = AgentCommand::CreateAgent {
            id: agent_id.clone(),
            config: AgentConfig {
                name: format!("Seeded agent {index}"),
                description: None,
                primary_provider: "vendorA".into(),
                fallback_provider: Some("vendorB".into()),
                model: None,
                models: Default::default(),
                system_prompt: None,
                temperature: None,
                max_tokens: None,
            },
        };
        let metadata = EventMetadata::new(id.clone(), "seed", "seed", "CreateAgent");
        let stream = StreamId::new(id.clone(), <Agent as cqrs_es::Aggregate>::TYPE, &agent_id);
        match log
            .execute::<Agent>(&stream, command, &services, &metadata)
            .await
        {
            Ok(_) | Err(eventlog::CommandError::Rejected(_)) => agent_ids.push(agent_id),
            Err(error) => return Err(anyhow::anyhow!("creating {agent_id}: {error}")),
        }
    }

    let providers = [
        ("vendorA", ["vendor-a-1", "vendor-a-large"], 2000u64),
        ("vendorB", ["vendor-b-1", "vendor-b-large"], 3000u64),
    ];
    let keys = ["key_seed_alpha", "key_seed_beta", "key_seed_gamma"];
    let now = chrono::Utc::now();
    let span_secs = (days.max(1) * 86_400) as u64;
    let sessions = count.div_ceil(REPLIES_PER_SESSION);
    let run = uuid::Uuid::now_v7().simple().to_string();
    let started = std::time::Instant::now();
    let (mut written, mut events) = (0u64, 0u64);
    let mut session = 0u64;
    const SESSIONS_PER_BATCH: u64 = 100;
    while session < sessions {
        let mut batch = Vec::new();
        for s in session..(session + SESSIONS_PER_BATCH).min(sessions) {
            // Spread sessions evenly over the span, deterministically.
            let offset = (s.wrapping_mul(2_654_435_761) % span_secs) as i64;
            let start = now - chrono::Duration::seconds(offset + 60);
            let session_id = format!("ses_seed{run}{s:09}");
            let agent_id = &agent_ids[(s % agent_ids.len() as u64) as usize];
            let (provider, models, price) = providers[(s % 2) as usize];
            let key = keys[(s % 3) as usize];
            let mut new_events = vec![NewEvent {
                recorded_at: Some(start),
                ..NewEvent::from_domain(&SessionEvent::SessionCreated {
                    id: session_id.clone(),
                    agent_id: agent_id.clone(),
                    customer_id: Some(format!("customer_{}", s % 1000)),
                    metadata: Default::default(),
                })?
            }];
            let replies = REPLIES_PER_SESSION.min(count - written);
            for m in 0..replies {
                let at = start + chrono::Duration::seconds(m as i64 * 3 + 1);
                let message_id = format!("msg_seed{run}{s:09}{m:02}");
                let tokens_in = 20 + (s + m) % 180;
                let tokens_out = 30 + (s * 7 + m) % 400;
                let price = Price {
                    micro_usd_per_1k_tokens: price,
                };
                let cost_micros = price
                    .cost_micros(tokens_in, tokens_out)
                    .context("a seeded reply's cost is out of range")?;
                new_events.push(NewEvent {
                    recorded_at: Some(at),
                    ..NewEvent::from_domain(&SessionEvent::UserMessageRecorded {
                        session_id: session_id.clone(),
                        message_id: message_id.clone(),
                        content: "How much does the large plan cost?".into(),
                    })?
                });
                new_events.push(NewEvent {
                    recorded_at: Some(at + chrono::Duration::milliseconds(400)),
                    ..NewEvent::from_domain(&SessionEvent::AssistantMessageRecorded {
                        session_id: session_id.clone(),
                        reply: AssistantReply {
                            message_id: format!("{message_id}r").into(),
                            reply_to: message_id.into(),
                            agent_id: agent_id.as_str().into(),
                            content: "The large plan costs 40 dollars a month.".into(),
                            provider: provider.into(),
                            model: models[(m % 2) as usize].into(),
                            tokens_in,
                            tokens_out,
                            cost_micros,
                            price,
                            fallback_used: false,
                            streamed: false,
                            client_disconnected: false,
                            incomplete: false,
                        },
                    })?
                });
            }
            written += replies;
            events += new_events.len() as u64;
            batch.push(StreamAppend {
                stream: StreamId::new(id.clone(), "Session", &session_id),
                expected_version: 0,
                events: new_events,
                metadata: EventMetadata::new(id.clone(), key, "seed-usage", "SeedUsage"),
            });
        }
        let appended = log.append(&batch).await?;
        if let Some(cursor) = appended.last_cursor() {
            log.notify_appended(cursor);
        }
        session += SESSIONS_PER_BATCH;
        progress("append", written, count);
    }
    let append_seconds = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    project(
        &log,
        settings,
        &[
            projections::tenants::NAME,
            projections::api_keys::NAME,
            projections::agents::NAME,
            projections::usage::NAME,
        ],
        events,
        &mut progress,
    )
    .await?;
    Ok(UsageSeed {
        tenant: tenant.to_string(),
        analyst_key: analyst,
        records: written,
        events,
        append_seconds,
        projection_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs the projectors `names`, one after the other, up to the log's head.
async fn project(
    log: &eventlog::EventLog,
    settings: &Settings,
    names: &[&str],
    events: u64,
    progress: &mut impl FnMut(&str, u64, u64),
) -> anyhow::Result<()> {
    let all = projections::all();
    // Everything appended so far, readable yet or not.
    let head = log.last_committed().await?;
    for name in names {
        let projector = all
            .iter()
            .find(|p| p.name() == *name)
            .expect("a known projector");
        projections::checkpoints::ensure(log.db(), name).await?;
        let mut applied = 0u64;
        loop {
            match workers::runner::run_batch(
                log,
                projector.as_ref(),
                projections::Target::Live,
                name,
                settings.projector_batch_size.max(1),
            )
            .await?
            {
                workers::runner::BatchOutcome::Applied { events: n, cursor } => {
                    applied += n as u64;
                    progress(name, applied, events);
                    if cursor >= head {
                        break;
                    }
                }
                // Nothing readable yet: done if the checkpoint is at the head; otherwise an
                // older transaction of the PostgreSQL cluster still holds back the log's
                // horizon: wait for it rather than report a projection that is not there.
                workers::runner::BatchOutcome::Idle => {
                    let at = projections::checkpoints::read(log.db(), name).await?;
                    if at.unwrap_or(eventlog::Cursor::START) >= head {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                workers::runner::BatchOutcome::Busy => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(())
}

/// What `gateway seed entities` did.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntitySeed {
    pub tenant: String,
    pub entity: String,
    /// A reader key of the tenant, for `gateway-bench --workload entity-queries`.
    pub reader_key: String,
    pub records: u64,
    pub events: u64,
    pub batch: usize,
    pub concurrency: usize,
    pub load_seconds: f64,
    pub records_per_second: f64,
    pub projection_seconds: f64,
}

/// Number of distinct categories of the seeded items.
const CATEGORIES: u64 = 20;

/// The document of seeded item `n`: deterministic, so runs are comparable.
fn item(n: u64) -> serde_json::Map<String, Value> {
    // A multiplicative hash spreads prices and categories without a random generator.
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let statuses = ["active", "active", "active", "draft", "retired"];
    let color = ["red", "green", "blue"][((h >> 37) % 3) as usize];
    let value = json!({
        "name": format!("item-{n:08}"),
        "category": format!("c{:02}", (h >> 7) % CATEGORIES),
        "price": (h >> 17) % 10_000,
        "status": statuses[((h >> 29) % 5) as usize],
        "attributes": {"color": color, "weight": (h >> 41) % 100},
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    }
}

/// `gateway seed entities`: defines the type `items` (indexed `category`, `price`, `status`,
/// `name`) for `tenant` and creates `count` records through the command path of
/// `/v1/_transact` (each batch one unit of work: every record's stream loaded and decided,
/// one commit per batch), `concurrency` batches at a time; then projects them.
pub async fn entities(
    settings: &Settings,
    tenant: &str,
    count: u64,
    batch: usize,
    concurrency: usize,
    mut progress: impl FnMut(&str, u64, u64),
) -> anyhow::Result<EntitySeed> {
    use domain::entity_type::{EntityType, EntityTypeCommand, Schema};
    use domain::names::EntityTypeName;

    use crate::entity_writes::{OpKind, Operation, type_stream};

    let log = crate::open_log(settings).await?;
    let id = TenantId::parse(tenant)?;
    let reader = benchmark_tenant(
        &log,
        &id,
        "entity benchmark",
        "entity-bench-reader",
        Role::Reader,
    )
    .await?;
    let entity = EntityTypeName::parse("items")?;
    let schema: Schema = serde_json::from_value(json!({"fields": {
        "name": {"type": "string", "required": true, "indexed": true},
        "category": {"type": "string", "required": true, "indexed": true},
        "price": {"type": "integer", "required": true, "indexed": true},
        "status": {"type": "string", "enum": ["active", "draft", "retired"], "indexed": true},
        "attributes": {"type": "json"}
    }}))?;
    let define = EntityTypeCommand::DefineEntityType {
        name: entity.clone(),
        schema,
        missing_references: Vec::new(),
    };
    let metadata = EventMetadata::new(id.clone(), "seed", "seed", "DefineEntityType");
    match log
        .execute::<EntityType>(&type_stream(&id, &entity), define, &(), &metadata)
        .await
    {
        Ok(_) | Err(eventlog::CommandError::Rejected(_)) => {}
        Err(error) => bail!("defining items: {error}"),
    }
    // Continue numbering after what an earlier run created: the first free number, found in
    // the log (records are numbered from 0 without gaps).
    let exists = |n: u64| {
        let stream = crate::entity_writes::entity_stream(
            &id,
            &entity,
            &domain::names::EntityId::parse(format!("item-{n:08}")).expect("a valid id"),
        );
        let log = &log;
        async move { log.version(&stream).await.map(|v| v > 0) }
    };
    let (mut low, mut high) = (0u64, 1u64);
    while exists(high - 1).await? {
        low = high;
        high *= 2;
    }
    while low < high {
        let middle = low + (high - low) / 2;
        if exists(middle).await? {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    let first = low;

    let started = std::time::Instant::now();
    let batch = batch.clamp(1, crate::entity_writes::MAX_OPERATIONS * 10);
    let (written, events) = write_batches(
        &log,
        &id,
        "seed-entities",
        count.div_ceil(batch as u64),
        concurrency,
        |b| {
            let from = first + b * batch as u64;
            let to = (from + batch as u64).min(first + count);
            (from..to)
                .map(|n| {
                    let record =
                        domain::names::EntityId::parse(format!("item-{n:08}")).expect("a valid id");
                    Operation::new(OpKind::Create, entity.clone(), Some(record), item(n), None)
                })
                .collect()
        },
        |done| progress("create", done, count),
    )
    .await?;
    let load_seconds = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    project(
        &log,
        settings,
        &[
            projections::tenants::NAME,
            projections::api_keys::NAME,
            projections::entity_types::NAME,
            projections::entities::NAME,
        ],
        events,
        &mut progress,
    )
    .await?;
    Ok(EntitySeed {
        tenant: tenant.to_string(),
        entity: entity.to_string(),
        reader_key: reader,
        records: written,
        events,
        batch,
        concurrency: concurrency.max(1),
        load_seconds,
        records_per_second: written as f64 / load_seconds.max(f64::EPSILON),
        projection_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Creates the benchmark tenant `id` unless it exists (without a rate limit that a load would
/// hit), and issues it a key with `role`; returns the key.
async fn benchmark_tenant(
    log: &eventlog::EventLog,
    id: &TenantId,
    purpose: &str,
    key_name: &str,
    role: Role,
) -> anyhow::Result<String> {
    let clock: ApiKeyServices = Arc::new(SystemClock);
    let tenant_stream = eventlog::StreamId::new(
        id.clone(),
        <domain::tenant::Tenant as cqrs_es::Aggregate>::TYPE,
        id.as_str(),
    );
    if log.version(&tenant_stream).await? == 0 {
        let metadata = EventMetadata::new(id.clone(), "seed", "seed", "CreateTenant");
        bootstrap::create_tenant(
            log,
            &clock,
            id.clone(),
            format!("{id} ({purpose})"),
            Some(1_000_000_000),
            &metadata,
            None,
            |_, _| eventlog::idempotency::StoredResponse {
                status: 201,
                headers: Vec::new(),
                body: Vec::new(),
            },
        )
        .await?;
    }
    let metadata = EventMetadata::new(id.clone(), "seed", "seed", "IssueApiKey");
    let (key, _) = bootstrap::issue_key(
        log,
        &clock,
        id,
        key_name.into(),
        vec![role],
        None,
        &metadata,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(key.token)
}

/// What `gateway seed relations` did.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelationSeed {
    pub tenant: String,
    /// A reader key of the tenant, for `gateway-bench --workload relation-queries`.
    pub reader_key: String,
    pub users: u64,
    pub projects: u64,
    pub resources: u64,
    pub edges: u64,
    pub events: u64,
    pub batch: usize,
    pub concurrency: usize,
    pub record_seconds: f64,
    pub records_per_second: f64,
    pub edge_seconds: f64,
    pub edges_per_second: f64,
    pub projection_seconds: f64,
}

/// How many records of each type `gateway seed relations` creates.
#[derive(Debug, Clone, Copy)]
pub struct RelationShape {
    pub users: u64,
    pub projects: u64,
    pub resources: u64,
    /// Operations per commit.
    pub batch: usize,
    /// Commits in flight.
    pub concurrency: usize,
}

/// The countries of seeded users: `DE` is one in ten.
const COUNTRIES: [&str; 10] = ["DE", "FR", "US", "GB", "NL", "ES", "IT", "PL", "SE", "JP"];

/// The kinds of seeded resources.
const KINDS: [&str; 4] = ["dataset", "model", "notebook", "dashboard"];

fn spread(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
}

/// Record `n`'s partner among `m` records: scattered, but distinct for distinct `n` below
/// `m`, so that batches written at the same time touch different records (and do not
/// conflict on their `References`).
fn scatter(n: u64, m: u64) -> u64 {
    if m == 0 {
        return 0;
    }
    let step = [7919u64, 7907, 7901]
        .into_iter()
        .find(|p| !m.is_multiple_of(*p))
        .unwrap_or(1);
    (n % m) * step % m
}

/// The types of seed 003's data set: `users`, `projects` (owned by a user, with `members`)
/// and `resources` (in a project, with `users` that use them).
fn relation_types() -> anyhow::Result<Vec<crate::catalogue::TypeDefinition>> {
    let types = json!({"entityTypes": [
        {"name": "users", "fields": {
            "name": {"type": "string", "required": true},
            "email": {"type": "string", "required": true},
            "country": {"type": "string", "required": true, "indexed": true}
        }},
        {"name": "projects", "fields": {
            "name": {"type": "string", "required": true},
            "status": {"type": "string", "enum": ["active", "archived"], "indexed": true},
            "owner": {"type": "reference", "references": "users", "required": true}
        }, "relations": {"members": {"to": "users"}}},
        {"name": "resources", "fields": {
            "name": {"type": "string", "required": true},
            "kind": {"type": "string", "indexed": true},
            "project": {"type": "reference", "references": "projects", "required": true}
        }, "relations": {"users": {"to": "users"}}}
    ]});
    crate::catalogue::parse(types).map_err(|e| anyhow::anyhow!("the seed's types: {e:?}"))
}

/// Runs `operations(b)` for every batch number `b` below `batches`, `concurrency` commits at
/// a time; returns the operations and events written.
async fn write_batches(
    log: &eventlog::EventLog,
    tenant: &TenantId,
    request: &str,
    batches: u64,
    concurrency: usize,
    operations: impl Fn(u64) -> Vec<crate::entity_writes::Operation>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<(u64, u64)> {
    use futures::StreamExt;

    let metadata = EventMetadata::new(tenant.clone(), "seed", request, "Transact");
    let (mut written, mut events) = (0u64, 0u64);
    let mut pending = futures::stream::iter((0..batches).map(|b| {
        let operations = operations(b);
        let metadata = &metadata;
        async move {
            let (committed, _) =
                crate::entity_writes::write(log, tenant, &operations, metadata, None, |_, _| {
                    eventlog::idempotency::StoredResponse {
                        status: 200,
                        headers: Vec::new(),
                        body: Vec::new(),
                    }
                })
                .await
                .map_err(|failure| anyhow::anyhow!("batch {b}: {failure}"))?;
            Ok::<_, anyhow::Error>((operations.len() as u64, committed.appended))
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some(result) = pending.next().await {
        let (n, appended) = result?;
        if let Some(cursor) = appended.last_cursor() {
            log.notify_appended(cursor);
        }
        written += n;
        events += appended.events.len() as u64;
        progress(written);
    }
    Ok((written, events))
}

/// `gateway seed relations`: seed 003's data set for `tenant` (a new one): users, projects
/// owned by users, resources in projects, and about 1.2 relation edges per record (two
/// `members` per project, two `users` per resource), all through the command path in
/// batches, then projected.
pub async fn relations(
    settings: &Settings,
    tenant: &str,
    shape: RelationShape,
    mut progress: impl FnMut(&str, u64, u64),
) -> anyhow::Result<RelationSeed> {
    use domain::names::{EntityId, EntityTypeName};

    use crate::entity_writes::{OpKind, Operation};

    let log = crate::open_log(settings).await?;
    let id = TenantId::parse(tenant)?;
    let users_type = EntityTypeName::parse("users")?;
    let exists = log
        .version(&crate::entity_writes::type_stream(&id, &users_type))
        .await?;
    if exists > 0 {
        bail!("tenant '{tenant}' already has a users type: seed a new tenant (--tenant)");
    }
    let reader = benchmark_tenant(
        &log,
        &id,
        "relation benchmark",
        "relation-bench-reader",
        Role::Reader,
    )
    .await?;
    let metadata = EventMetadata::new(id.clone(), "seed", "seed", "ImportEntityTypes");
    crate::catalogue::import(&log, &id, &metadata, &relation_types()?, None, |_| {
        eventlog::idempotency::StoredResponse {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("defining the seed's types: {e}"))?;

    let batch = shape
        .batch
        .clamp(1, crate::entity_writes::MAX_OPERATIONS * 10) as u64;
    let record =
        |prefix: &str, n: u64| EntityId::parse(format!("{prefix}-{n:07}")).expect("a valid id");
    let object = |value: Value| match value {
        Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    };
    let started = std::time::Instant::now();
    let mut events = 0u64;
    let (users, projects, resources) = (shape.users, shape.projects, shape.resources);
    let types = [
        ("users", "user", users),
        ("projects", "project", projects),
        ("resources", "resource", resources),
    ];
    for (entity, prefix, count) in types {
        let entity = EntityTypeName::parse(entity)?;
        let data = |n: u64| -> Value {
            let h = spread(n);
            match prefix {
                "user" => json!({
                    "name": format!("User {n}"),
                    "email": format!("user{n}@example.com"),
                    "country": COUNTRIES[(h % 10) as usize],
                }),
                "project" => json!({
                    "name": format!("Project {n}"),
                    "status": if h.is_multiple_of(5) { "archived" } else { "active" },
                    "owner": record("user", scatter(n, users)).to_string(),
                }),
                _ => json!({
                    "name": format!("Resource {n}"),
                    "kind": KINDS[(h % 4) as usize],
                    "project": record("project", scatter(n, projects)).to_string(),
                }),
            }
        };
        let (_, appended) = write_batches(
            &log,
            &id,
            "seed-relations",
            count.div_ceil(batch),
            shape.concurrency,
            |b| {
                (b * batch..((b + 1) * batch).min(count))
                    .map(|n| {
                        Operation::new(
                            OpKind::Create,
                            entity.clone(),
                            Some(record(prefix, n)),
                            object(data(n)),
                            None,
                        )
                    })
                    .collect()
            },
            |done| progress(entity.as_str(), done, count),
        )
        .await?;
        events += appended;
    }
    let record_seconds = started.elapsed().as_secs_f64();

    // Two members per project and two users per resource, spread over the users.
    let started = std::time::Instant::now();
    let mut edges = 0u64;
    for (entity, prefix, relation, count) in [
        ("projects", "project", "members", projects),
        ("resources", "resource", "users", resources),
    ] {
        if users == 0 {
            break;
        }
        let entity = EntityTypeName::parse(entity)?;
        let total = count * 2;
        let (written, appended) = write_batches(
            &log,
            &id,
            "seed-relations",
            total.div_ceil(batch),
            shape.concurrency,
            |b| {
                (b * batch..((b + 1) * batch).min(total))
                    .map(|e| {
                        let n = e / 2;
                        let user = scatter(e, users);
                        Operation::link(
                            false,
                            entity.clone(),
                            record(prefix, n),
                            relation.to_string(),
                            record("user", user),
                        )
                    })
                    .collect()
            },
            |done| progress(relation, done, total),
        )
        .await?;
        edges += written;
        events += appended;
    }
    let edge_seconds = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    project(
        &log,
        settings,
        &[
            projections::tenants::NAME,
            projections::api_keys::NAME,
            projections::entity_types::NAME,
            projections::entities::NAME,
            projections::relations::NAME,
        ],
        events,
        &mut progress,
    )
    .await?;
    let records = users + projects + resources;
    Ok(RelationSeed {
        tenant: tenant.to_string(),
        reader_key: reader,
        users,
        projects,
        resources,
        edges,
        events,
        batch: batch as usize,
        concurrency: shape.concurrency.max(1),
        record_seconds,
        records_per_second: records as f64 / record_seconds.max(f64::EPSILON),
        edge_seconds,
        edges_per_second: edges as f64 / edge_seconds.max(f64::EPSILON),
        projection_seconds: started.elapsed().as_secs_f64(),
    })
}
