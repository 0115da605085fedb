//! Faults under load: 16 clients create records, each with its own `Idempotency-Key`, and
//! retry the same key until they get an answer, while the gateway is killed three times
//! (restarted on the same database), or while its database connections are cut. Afterwards
//! every acknowledged record is in the log exactly once, nothing else was written, and the
//! read model equals a fresh rebuild. The test prints its figures (acknowledged, lost,
//! duplicated, recovery seconds); `docs/reliability.md` has them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventlog::Statement;
use serde_json::json;
use tokio::sync::RwLock;

use crate::both_backends;
use crate::helpers::{Backend, Process, TestDb, create_tenant};

const CLIENTS: usize = 16;

/// Records each client creates: `FAULT_RECORDS` (default 40), larger for soaks.
fn records_per_client() -> usize {
    std::env::var("FAULT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

/// The load: each client creates its records one after another, retrying each (same key)
/// until a 201 (or a replayed 201) arrives. Returns the ids acknowledged.
async fn load(base: Arc<RwLock<String>>, key: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let clients = (0..CLIENTS).map(|c| {
        let base = base.clone();
        let key = key.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut acknowledged = Vec::new();
            for n in 0..records_per_client() {
                let id = format!("c{c}-{n}");
                loop {
                    assert!(!stop.load(Ordering::Relaxed), "the load gave up on {id}");
                    let url = format!("{}/v1/tasks", base.read().await);
                    let sent = client
                        .post(url)
                        .header("x-api-key", &key)
                        .header("idempotency-key", &id)
                        .json(&json!({ "id": id, "client": c, "n": n }))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == 201 => {
                            acknowledged.push(id.clone());
                            break;
                        }
                        Ok(response)
                            if response.status().is_client_error() && response.status() != 409 =>
                        {
                            panic!("{id}: {}", response.status());
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
            acknowledged
        })
    });
    let mut all = Vec::new();
    for client in futures::future::join_all(clients).await {
        all.extend(client.unwrap());
    }
    all
}

/// Every acknowledged record's stream holds exactly one creation, no other record was
/// written, and the entities read model equals a rebuild of it.
async fn check(db: &TestDb, acknowledged: &[String]) -> (usize, usize) {
    let log = db.log().await;
    let tenant = domain::names::TenantId::parse("acme").unwrap();
    let mut duplicated = 0;
    let mut lost = 0;
    for id in acknowledged {
        let stream = eventlog::StreamId::new(tenant.clone(), "Entity", format!("tasks/{id}"));
        match log.load(&stream, 0).await.unwrap().len() {
            0 => lost += 1,
            1 => {}
            _ => duplicated += 1,
        }
    }
    let (written,): (i64,) = log
        .db()
        .fetch_one(Statement::new(
            "SELECT COUNT(*) FROM events WHERE aggregate_type = 'Entity' AND tenant_id = 'acme'",
        ))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(written as usize, acknowledged.len(), "creations in the log");
    equals_a_rebuild(&log).await;
    log.db().close().await;
    (lost, duplicated)
}

/// Rebuilds the entities read model and requires it equal to the live one; returns its rows.
async fn equals_a_rebuild(log: &eventlog::EventLog) -> usize {
    let before = crate::projections::entities_table(log).await;
    let entities = projections::all()
        .into_iter()
        .find(|p| p.name() == "entities")
        .unwrap();
    workers::rebuild::rebuild(log, entities.as_ref(), 500, |_, _| {})
        .await
        .unwrap();
    let after = crate::projections::entities_table(log).await;
    assert_eq!(before, after, "the read model equals a rebuild");
    after.len()
}

/// Waits until the read model holds `count` records of acme.
async fn projected(db: &TestDb, count: usize) {
    let log = db.log().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows,): (i64,) = log
            .db()
            .fetch_one(Statement::new(
                "SELECT COUNT(*) FROM entities WHERE tenant_id = 'acme'",
            ))
            .await
            .unwrap()
            .decode()
            .unwrap();
        if rows as usize == count {
            break;
        }
        if Instant::now() > deadline {
            let checkpoint = projections::checkpoints::read(log.db(), "entities")
                .await
                .unwrap();
            let missing: Vec<(String, i64, i64)> = log
                .db()
                .fetch_all_as(Statement::new(
                    "SELECT aggregate_id, CAST(transaction_id AS TEXT), global_position FROM events e \
                     WHERE aggregate_type = 'Entity' AND NOT EXISTS (SELECT 1 FROM entities n \
                     WHERE n.tenant_id = e.tenant_id AND 'tasks/' || n.id = e.aggregate_id)",
                ))
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|(a, t, p): (String, String, i64)| (a, t.parse().unwrap_or(-1), p))
                .collect();
            eprintln!("missing from the read model: {missing:?}");
            panic!(
                "{rows} of {count} records projected; checkpoint {checkpoint:?}, head {:?}, \
                 last committed {:?}",
                log.head().await.unwrap(),
                log.last_committed().await.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.db().close().await;
}

async fn kill_three_times_under_load(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = db.settings();
    settings.projector_poll_ms = 50;
    let log = db.log().await;
    let key = create_tenant(&log, "acme").await;
    log.db().close().await;
    let mut process = Process::start(settings.clone());
    let base = Arc::new(RwLock::new(format!("http://127.0.0.1:{}", process.port)));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(base.clone(), key, stop.clone()));
    let mut recoveries = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        process.kill();
        let restarted = Instant::now();
        process = Process::start(settings.clone());
        *base.write().await = format!("http://127.0.0.1:{}", process.port);
        recoveries.push(restarted.elapsed().as_secs_f64());
    }
    let acknowledged = tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .expect("the load finished")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(acknowledged.len(), CLIENTS * records_per_client());
    projected(&db, acknowledged.len()).await;
    let (lost, duplicated) = check(&db, &acknowledged).await;
    eprintln!(
        "kill -9 x3 ({backend:?}): acknowledged {}, lost {lost}, duplicated {duplicated}, \
         restart seconds {recoveries:?}",
        acknowledged.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    process.kill();
}
both_backends!(kill_three_times_under_load, kill_three_times_under_load);

/// Stops the machine's PostgreSQL cluster without a shutdown checkpoint (`-m immediate`: a
/// crash, recovered from the WAL) and starts it again.
fn restart_postgres_immediately() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .expect("a cluster version");
    let status = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "immediate",
        ])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster restart: {status}");
}

/// The database connections cut for two seconds under load, as a PostgreSQL crash looks from
/// the gateway: commits whose answer was lost are retried with their key. With
/// `FAULT_PG_RESTART=1` the machine's PostgreSQL is restarted with `-m immediate` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_cut_under_load() {
    let db = TestDb::new(Backend::Postgres).await;
    let server = crate::servers::address_of(&db.url);
    let proxy = crate::streams::Proxy::start(server.parse().unwrap()).await;
    let mut settings = db.settings();
    settings.projector_poll_ms = 50;
    settings.database_acquire_timeout_ms = 500;
    settings.database_url = Some(db.url.replace(&server, &proxy.address().to_string()).into());
    let log = db.log().await;
    let key = create_tenant(&log, "acme").await;
    log.db().close().await;
    let process = Process::start(settings);
    let base = Arc::new(RwLock::new(format!("http://127.0.0.1:{}", process.port)));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(base.clone(), key, stop.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fault = if std::env::var("FAULT_PG_RESTART").is_ok_and(|v| v == "1") {
        // The real thing, for a soak on a machine of its own: every other user of the
        // cluster sees it restart too, so CI cuts the connections instead.
        let started = Instant::now();
        restart_postgres_immediately();
        eprintln!(
            "PostgreSQL was down and recovering for {:.1} s",
            started.elapsed().as_secs_f64()
        );
        "PostgreSQL restarted -m immediate"
    } else {
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore();
        "database cut 2 s"
    };
    let restored = Instant::now();
    let acknowledged = tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .expect("the load finished")
        .unwrap();
    let finished = restored.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    projected(&db, acknowledged.len()).await;
    let (lost, duplicated) = check(&db, &acknowledged).await;
    eprintln!(
        "{fault} (Postgres): acknowledged {}, lost {lost}, duplicated {duplicated}, \
         load finished {finished:.1} s after the database came back",
        acknowledged.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    process.kill();
}

/// 20,000 record events in the log, then the gateway killed five times while its projectors
/// catch up: the read model ends equal to a rebuild, with every record once.
async fn projectors_killed_while_catching_up(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    create_tenant(&log, "acme").await;
    let tenant = domain::names::TenantId::parse("acme").unwrap();
    let entity_type = domain::names::EntityTypeName::parse("tasks").unwrap();
    const EVENTS: usize = 20_000;
    for chunk in 0..EVENTS / 500 {
        let batch: Vec<eventlog::StreamAppend> = (0..500)
            .map(|i| {
                let id = domain::names::EntityId::parse(format!("b{chunk}-{i}")).unwrap();
                let mut data = serde_json::Map::new();
                data.insert("n".into(), json!(i));
                let event = domain::entity::EntityEvent::EntityCreated {
                    entity_type: entity_type.clone(),
                    id: id.clone(),
                    data,
                };
                eventlog::StreamAppend {
                    stream: app::entity_writes::entity_stream(&tenant, &entity_type, &id),
                    expected_version: 0,
                    events: vec![eventlog::NewEvent::from_domain(&event).unwrap()],
                    metadata: domain::metadata::EventMetadata::new(
                        tenant.clone(),
                        "test",
                        "backlog",
                        "CreateEntity",
                    ),
                }
            })
            .collect();
        log.append(&batch).await.unwrap();
    }
    log.db().close().await;
    let mut settings = db.settings();
    settings.projector_batch_size = 100;
    let mut kills = Vec::new();
    for _ in 0..5 {
        let process = Process::start(settings.clone());
        tokio::time::sleep(Duration::from_millis(120)).await;
        let log = db.log().await;
        let at = projections::checkpoints::read(log.db(), "entities")
            .await
            .unwrap()
            .unwrap_or_default();
        let (behind, _) = log.backlog(at).await.unwrap();
        log.db().close().await;
        kills.push(behind);
        process.kill();
    }
    let process = Process::start(settings);
    projected(&db, EVENTS).await;
    let log = db.log().await;
    let records = equals_a_rebuild(&log).await;
    eprintln!(
        "projectors killed x5 during a {EVENTS}-event catch-up ({backend:?}): events behind at \
         each kill {kills:?}; {records} records, equal to a rebuild"
    );
    log.db().close().await;
    process.kill();
}
both_backends!(
    projectors_killed_while_catching_up,
    projectors_killed_while_catching_up
);

/// A pooled PostgreSQL connection that the database dropped while it sat idle (a restart, a
/// proxy's idle timeout) is found dead and replaced before the next command uses it: the
/// pool skips the test of a connection used less than a second ago, never of one idle longer.
#[tokio::test]
async fn an_idle_connection_the_database_dropped_is_replaced_before_use() {
    let db = TestDb::new(Backend::Postgres).await;
    let pool = eventlog::Db::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let eventlog::Db::Postgres(pg) = &pool else {
        unreachable!("a PostgreSQL URL");
    };
    let backend = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
    };
    let first = backend(pg.clone()).await.unwrap();
    // The connection goes back to the pool once sqlx has tested it on its return.
    crate::helpers::eventually(Duration::from_secs(10), || async {
        (pg.size() == 1 && pg.num_idle() == 1).then_some(())
    })
    .await;
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(terminated);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = backend(pg.clone())
        .await
        .expect("the dead connection is replaced, not handed out");
    assert_ne!(first, second);
    let mut tx = pool.begin().await.expect("a write transaction begins");
    tx.execute(Statement::new("SELECT 1")).await.unwrap();
    tx.commit().await.unwrap();
}
