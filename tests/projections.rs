//! The projector runtime: exactly-once effects, one runner at a time across processes, and
//! rebuilds that reproduce the live read model.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use eventlog::{Cursor, EventLog, NewEvent, RecordedEvent, Statement, StreamAppend, StreamId, Tx};
use projections::progress::Progress;
use projections::{ProjectionError, Projector, Target, checkpoints};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use workers::runner::{self, BatchOutcome};

use crate::both_backends;
use crate::helpers::{Backend, TestDb, eventually, spawn_app};

/// Records every event it applies in `test_applied`, without any uniqueness, so that a
/// double application shows up as a duplicate row.
struct Counting {
    name: &'static str,
    tables: &'static [&'static str],
    /// Batches still to fail, each after writing its rows.
    failures: AtomicU32,
}

impl Counting {
    fn new() -> Arc<Self> {
        Self::named("test_counting", &["test_applied"])
    }

    fn named(name: &'static str, tables: &'static [&'static str]) -> Arc<Self> {
        Arc::new(Self {
            name,
            tables,
            failures: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl Projector for Counting {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tables(&self) -> &'static [&'static str] {
        self.tables
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Thing"]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[std::sync::Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let sql = format!(
            "INSERT INTO {} (event_id) VALUES ($1)",
            target.table(self.tables[0])
        );
        for event in events {
            tx.execute(Statement::new(&sql).bind(event.event_id.to_string()))
                .await?;
        }
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ProjectionError::Database(sqlx::Error::Protocol(
                "injected failure".into(),
            )));
        }
        Ok(())
    }
}

async fn create_counting_table(log: &EventLog) {
    create_table(log, "test_applied").await;
}

async fn create_table(log: &EventLog, table: &str) {
    let mut tx = log.db().begin().await.unwrap();
    let sql = format!("CREATE TABLE {table} (event_id TEXT NOT NULL)");
    tx.execute(Statement::new(&sql)).await.unwrap();
    tx.commit().await.unwrap();
}

async fn applied(log: &EventLog) -> (i64, i64) {
    applied_in(log, "test_applied").await
}

async fn applied_in(log: &EventLog, table: &str) -> (i64, i64) {
    let sql = format!("SELECT count(*), count(DISTINCT event_id) FROM {table}");
    log.db()
        .fetch_one(Statement::new(&sql))
        .await
        .unwrap()
        .decode()
        .unwrap()
}

fn tenant() -> TenantId {
    TenantId::parse("tenant-p").unwrap()
}

async fn append_events(log: &EventLog, stream_id: &str, count: usize) {
    for i in 0..count {
        log.append(&[StreamAppend {
            stream: StreamId::new(tenant(), "Thing", stream_id),
            expected_version: i as u64,
            events: vec![NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: "ThingHappened".into(),
                event_version: "1.0".into(),
                payload: json!({ "i": i }).into(),
                recorded_at: None,
            }],
            metadata: EventMetadata::new(tenant(), "test", "req", "DoThing"),
        }])
        .await
        .unwrap();
    }
}

async fn two_processes_running_one_projector_apply_each_event_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = db.log().await;
    let second = db.log().await; // its own pools, as another process would have
    create_counting_table(&first).await;
    let shutdown = CancellationToken::new();
    let settings = workers::RunnerSettings {
        batch_size: 7,
        poll_interval: Duration::from_millis(5),
        coalesce: Duration::ZERO,
    };
    let projector = Counting::new();
    let runners: Vec<_> = [&first, &second]
        .into_iter()
        .flat_map(|log| {
            (0..2).map(|_| {
                runner::spawn_group(
                    log.clone(),
                    vec![projector.clone() as Arc<dyn Projector>],
                    Progress::default(),
                    settings.clone(),
                    shutdown.clone(),
                )
            })
        })
        .collect();

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let log = if w % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move { append_events(&log, &format!("s{w}"), 50).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let total = 200;
    eventually(Duration::from_secs(30), || async {
        (applied(&first).await.0 >= total).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        applied(&first).await,
        (total, total),
        "each event applied once"
    );
    shutdown.cancel();
    for runner in runners {
        runner.await.unwrap();
    }
    let checkpoint = checkpoints::read(first.db(), "test_counting")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.backlog(checkpoint).await.unwrap().0,
        0,
        "checkpoint at the end"
    );
}
both_backends!(
    two_processes_running_one_projector_apply_each_event_once,
    two_processes_running_one_projector_apply_each_event_once
);

async fn a_failed_batch_leaves_no_effect_and_is_applied_once_on_retry(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    create_counting_table(&log).await;
    append_events(&log, "s", 5).await;
    let projector = Counting::new();
    projector.failures.store(1, Ordering::SeqCst);
    eventually(Duration::from_secs(20), || async {
        (log.read_after(Cursor::START, 10).await.unwrap().len() == 5).then_some(())
    })
    .await;

    let failed =
        runner::run_batch(&log, projector.as_ref(), Target::Live, "test_counting", 3).await;
    assert!(failed.is_err(), "the batch should fail: {failed:?}");
    assert_eq!(
        applied(&log).await,
        (0, 0),
        "the failed batch's rows were rolled back"
    );
    assert_eq!(
        checkpoints::read(log.db(), "test_counting").await.unwrap(),
        None
    );

    let mut outcomes = Vec::new();
    loop {
        let outcome = runner::run_batch(&log, projector.as_ref(), Target::Live, "test_counting", 3)
            .await
            .unwrap();
        outcomes.push(outcome);
        if outcome == BatchOutcome::Idle {
            break;
        }
    }
    assert!(matches!(
        outcomes[0],
        BatchOutcome::Applied { events: 3, .. }
    ));
    assert!(matches!(
        outcomes[1],
        BatchOutcome::Applied { events: 2, .. }
    ));
    assert_eq!(applied(&log).await, (5, 5));
}
both_backends!(
    a_failed_batch_leaves_no_effect_and_is_applied_once_on_retry,
    a_failed_batch_leaves_no_effect_and_is_applied_once_on_retry
);

/// A log of five events and a group of two projectors over them: `test_steady`, and
/// `test_flaky`, which fails its next `failures` batches (the group's).
async fn steady_and_flaky(
    backend: Backend,
    failures: u32,
) -> (TestDb, EventLog, Arc<Counting>, Vec<Arc<dyn Projector>>) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    create_table(&log, "test_steady").await;
    create_table(&log, "test_flaky").await;
    append_events(&log, "s", 5).await;
    eventually(Duration::from_secs(20), || async {
        (log.read_after(Cursor::START, 10).await.unwrap().len() == 5).then_some(())
    })
    .await;
    let steady = Counting::named("test_steady", &["test_steady"]);
    let flaky = Counting::named("test_flaky", &["test_flaky"]);
    flaky.failures.store(failures, Ordering::SeqCst);
    let group: Vec<Arc<dyn Projector>> = vec![steady, flaky.clone()];
    (db, log, flaky, group)
}

/// The projectors a group batch applied, with the events each was given.
fn applied_names(outcome: &runner::GroupOutcome) -> Vec<(&str, usize)> {
    outcome
        .applied
        .iter()
        .map(|(name, _, events)| (*name, *events))
        .collect()
}

async fn a_failing_projector_of_a_group_is_rolled_back_alone_and_catches_up(backend: Backend) {
    // Twice: the batch applied with every projector together, then in savepoints.
    let (_db, log, _flaky, group) = steady_and_flaky(backend, 2).await;

    // The flaky projector fails: its rows and checkpoint are rolled back, the steady one commits.
    let first = runner::run_group(&log, &group, 3).await.unwrap();
    assert_eq!(applied_names(&first), [("test_steady", 3)]);
    assert_eq!(first.failed.len(), 1);
    assert_eq!(first.failed[0].0, "test_flaky");
    assert_eq!(applied_in(&log, "test_steady").await, (3, 3));
    assert_eq!(applied_in(&log, "test_flaky").await, (0, 0));
    assert_eq!(
        checkpoints::read(log.db(), "test_flaky").await.unwrap(),
        None
    );

    // The retry reads from the earliest checkpoint: only the flaky one has events to apply.
    let second = runner::run_group(&log, &group, 3).await.unwrap();
    assert_eq!(applied_names(&second), [("test_flaky", 3)]);
    let third = runner::run_group(&log, &group, 3).await.unwrap();
    assert_eq!(
        applied_names(&third),
        [("test_steady", 2), ("test_flaky", 2)]
    );
    let idle = runner::run_group(&log, &group, 3).await.unwrap();
    assert!(idle.applied.is_empty() && idle.failed.is_empty() && idle.read == 0);
    assert_eq!(applied_in(&log, "test_steady").await, (5, 5));
    assert_eq!(applied_in(&log, "test_flaky").await, (5, 5));
    let head = log
        .read_after(Cursor::START, 10)
        .await
        .unwrap()
        .last()
        .unwrap()
        .cursor;
    for name in ["test_steady", "test_flaky"] {
        assert_eq!(
            checkpoints::read(log.db(), name).await.unwrap(),
            Some(head),
            "{name} ends at the head"
        );
    }
}
both_backends!(
    a_failing_projector_of_a_group_is_rolled_back_alone_and_catches_up,
    a_failing_projector_of_a_group_is_rolled_back_alone_and_catches_up
);

async fn a_group_batch_that_fails_once_is_applied_again_in_savepoints(backend: Backend) {
    let (_db, log, flaky, group) = steady_and_flaky(backend, 1).await;

    // The first attempt (every projector together) fails and is rolled back whole, rows
    // the steady projector wrote in it included; the second, in savepoints, applies both.
    let outcome = runner::run_group(&log, &group, 5).await.unwrap();
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(
        applied_names(&outcome),
        [("test_steady", 5), ("test_flaky", 5)],
        "events read: {}, failures left: {}",
        outcome.read,
        flaky.failures.load(Ordering::SeqCst)
    );
    assert_eq!(
        flaky.failures.load(Ordering::SeqCst),
        0,
        "the failure was used"
    );
    assert_eq!(applied_in(&log, "test_steady").await, (5, 5));
    assert_eq!(applied_in(&log, "test_flaky").await, (5, 5));
}
both_backends!(
    a_group_batch_that_fails_once_is_applied_again_in_savepoints,
    a_group_batch_that_fails_once_is_applied_again_in_savepoints
);

type Timestamp = chrono::DateTime<chrono::Utc>;
type EntityRow = (
    String,
    String,
    String,
    sqlx::types::Json<Value>,
    i64,
    Timestamp,
    Timestamp,
    Option<Timestamp>,
);

pub(crate) async fn entities_table(log: &EventLog) -> Vec<Value> {
    {
        let rows: Vec<EntityRow> = log
            .db()
            .fetch_all_as(Statement::new(
                "SELECT tenant_id, entity_type, id, data, version, created_at, updated_at, deleted_at \
                 FROM entities ORDER BY tenant_id, entity_type, id",
            ))
            .await
            .unwrap();
        rows.into_iter()
            .map(
                |(tenant, kind, id, data, version, created, updated, deleted)| {
                    json!([tenant, kind, id, data.0, version, created, updated, deleted])
                },
            )
            .collect()
    }
}

async fn a_rebuilt_projection_equals_the_live_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut target = Cursor::START;
    let mut remember = |response: &reqwest::Response| {
        let position: Cursor = response.headers()["x-event-position"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        target = target.max(position);
    };
    for i in 0..30 {
        let tenant = if i % 3 == 0 { "acme" } else { "globex" };
        let response = app
            .create(tenant, "users", json!({ "id": format!("u{i}"), "n": i }))
            .await;
        assert_eq!(response.status(), 201);
        remember(&response);
        if i % 4 == 0 {
            let response = app
                .request(reqwest::Method::PATCH, &format!("/v1/users/u{i}"), tenant)
                .json(&json!({ "n": null, "patched": true }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            remember(&response);
        }
        if i % 5 == 0 {
            let response = app
                .request(reqwest::Method::DELETE, &format!("/v1/users/u{i}"), tenant)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            remember(&response);
        }
    }
    let log = app.db.log().await;
    eventually(Duration::from_secs(10), || async {
        let checkpoint = checkpoints::read(log.db(), "entities").await.unwrap()?;
        (checkpoint >= target).then_some(())
    })
    .await;
    let live = entities_table(&log).await;
    let indexes = workers::rebuild::index_names(log.db(), "entities")
        .await
        .unwrap();
    assert_eq!(live.len(), 30);
    // The rebuild reads the whole log: the 44 entity events and the test tenants' events.
    let (in_log, _) = log.backlog(Cursor::START).await.unwrap();

    let mut progress = Vec::new();
    let report = workers::rebuild::rebuild(
        &log,
        &projections::entities::EntitiesProjector,
        4,
        |done, total| progress.push((done, total)),
    )
    .await
    .unwrap();
    assert_eq!(report.events, in_log);
    assert_eq!(
        progress.last(),
        Some(&(in_log, in_log)),
        "progress reached the total"
    );
    assert_eq!(entities_table(&log).await, live, "row for row");
    assert_eq!(
        workers::rebuild::index_names(log.db(), "entities")
            .await
            .unwrap(),
        indexes,
        "index names survive the swap"
    );
    // A second rebuild starts from what the first one swapped in.
    let again = workers::rebuild::rebuild(
        &log,
        &projections::entities::EntitiesProjector,
        500,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(again.events, in_log);
    assert_eq!(entities_table(&log).await, live, "row for row, again");
    assert_eq!(
        workers::rebuild::index_names(log.db(), "entities")
            .await
            .unwrap(),
        indexes,
        "index names survive a second swap"
    );
    // The live projector carries on from the rebuilt checkpoint.
    let response = app.create("acme", "users", json!({ "id": "after" })).await;
    let position = response.headers()["x-event-position"]
        .to_str()
        .unwrap()
        .to_string();
    let found = app
        .request(reqwest::Method::GET, "/v1/users/after", "acme")
        .header("x-min-position", position)
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
}
both_backends!(
    a_rebuilt_projection_equals_the_live_one,
    a_rebuilt_projection_equals_the_live_one
);

async fn two_gateways_on_one_database_serve_each_others_writes(backend: Backend) {
    let first = spawn_app(backend).await;
    let mut second = crate::helpers::spawn_app_on(first.db.share(), |_| {}).await;
    second.keys = first.keys.clone();
    let mut positions = Vec::new();
    for i in 0..20 {
        let (writer, reader) = if i % 2 == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        let created = writer
            .create("acme", "orders", json!({ "id": format!("o{i}") }))
            .await;
        assert_eq!(created.status(), 201);
        let at = created.headers()["x-event-position"]
            .to_str()
            .unwrap()
            .to_string();
        let read = reader
            .request(reqwest::Method::GET, &format!("/v1/orders/o{i}"), "acme")
            .header("x-min-position", &at)
            .header("x-consistency", "strict")
            .send()
            .await
            .unwrap();
        assert_eq!(
            read.status(),
            200,
            "gateway B reads gateway A's write at once"
        );
        positions.push(at);
    }
    let listed: Value = first
        .request(reqwest::Method::GET, "/v1/orders?limit=100", "acme")
        .header("x-min-position", positions.last().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 20);
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|item| item["version"] == 1),
        "each create applied once"
    );
    second.shutdown.cancel();
    let _ = second.server.await;
}
both_backends!(
    two_gateways_on_one_database_serve_each_others_writes,
    two_gateways_on_one_database_serve_each_others_writes
);
