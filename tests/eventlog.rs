//! The event log's guarantees (DESIGN.md §3), on SQLite and PostgreSQL.

use std::collections::HashSet;
use std::time::Duration;

use cqrs_es::persist::SemanticVersionEventUpcaster;
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use eventlog::{AppendError, Cursor, EventLog, NewEvent, RecordedEvent, StreamAppend, StreamId};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Backend, TestDb};

fn tenant() -> TenantId {
    TenantId::parse("tenant-a").unwrap()
}

fn stream(id: &str) -> StreamId {
    StreamId::new(tenant(), "Widget", id)
}

fn metadata() -> EventMetadata {
    EventMetadata::new(tenant(), "key_test", "req_test", "RenameWidget")
}

fn event(name: &str) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "WidgetRenamed".into(),
        event_version: "1.0".into(),
        payload: json!({ "name": name }).into(),
        recorded_at: None,
    }
}

fn append(stream: StreamId, expected_version: u64, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream,
        expected_version,
        events,
        metadata: metadata(),
    }
}

/// Reads until at least `expected` events after `after` are visible. On PostgreSQL, events
/// become readable once every older transaction of the cluster has ended, which other tests
/// running in parallel can delay a little.
async fn read_at_least(
    log: &EventLog,
    after: Cursor,
    expected: usize,
) -> (Vec<RecordedEvent>, Cursor) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (events, cursor) = read_all(log, after).await;
        if events.len() >= expected || tokio::time::Instant::now() > deadline {
            return (events, cursor);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event after `after` visible now, read in batches of 7 as a projector would.
async fn read_all(log: &EventLog, mut after: Cursor) -> (Vec<RecordedEvent>, Cursor) {
    let mut events = Vec::new();
    loop {
        let batch = log.read_after(after, 7).await.unwrap();
        let Some(last) = batch.last() else {
            return (events, after);
        };
        after = last.cursor;
        events.extend(batch);
    }
}

async fn a_reader_never_moves_past_an_open_transaction(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;

    // Writer A opens a transaction and appends, but does not commit yet.
    let mut open = log.db().begin().await.unwrap();
    log.append_in(&mut open, &[append(stream("a"), 0, vec![event("a1")])])
        .await
        .unwrap();

    // Other writers append meanwhile. On PostgreSQL they commit; on SQLite they wait for the
    // single writer.
    let others: Vec<_> = ["b", "c", "d"]
        .into_iter()
        .map(|id| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(&[append(stream(id), 0, vec![event(id)])])
                    .await
                    .unwrap()
            })
        })
        .collect();
    if backend == Backend::Postgres {
        for other in others.iter() {
            while !other.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    let (seen_before, cursor) = read_all(&log, Cursor::START).await;
    assert!(
        seen_before.is_empty(),
        "the reader moved past an open transaction: {:?}",
        seen_before
            .iter()
            .map(|e| &e.aggregate_id)
            .collect::<Vec<_>>()
    );

    open.commit().await.unwrap();
    for other in others {
        other.await.unwrap();
    }
    let (seen_after, cursor) = read_at_least(&log, cursor, 4).await;
    assert!(read_all(&log, cursor).await.0.is_empty(), "nothing more");
    let ids: Vec<_> = seen_after.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "every event exactly once: {ids:?}");
    assert_eq!(ids[0], "a", "the open transaction's event comes first");
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 4);
}
both_backends!(
    a_reader_never_moves_past_an_open_transaction,
    a_reader_never_moves_past_an_open_transaction
);

async fn a_tailing_reader_sees_every_event_of_concurrent_writers_exactly_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let writers = 8;
    let per_writer = 40;

    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut cursor = Cursor::START;
            let mut seen = Vec::new();
            while seen.len() < writers * per_writer {
                let batch = log.read_after(cursor, 13).await.unwrap();
                if let Some(last) = batch.last() {
                    assert!(last.cursor > cursor, "cursors only move forward");
                    cursor = last.cursor;
                }
                seen.extend(batch.into_iter().map(|e| e.event_id));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen
        })
    };
    let mut written = Vec::new();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..per_writer {
                    let e = event(&format!("{w}-{i}"));
                    ids.push(e.event_id);
                    // Some transactions stay open a little while others commit.
                    let mut tx = log.db().begin().await.unwrap();
                    log.append_in(
                        &mut tx,
                        &[append(stream(&format!("w{w}")), i as u64, vec![e])],
                    )
                    .await
                    .unwrap();
                    if i % 5 == w % 5 {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    tx.commit().await.unwrap();
                }
                ids
            })
        })
        .collect();
    for task in tasks {
        written.extend(task.await.unwrap());
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reader caught up")
        .unwrap();
    assert_eq!(seen.len(), written.len());
    let seen_set: HashSet<_> = seen.iter().collect();
    assert_eq!(seen_set.len(), seen.len(), "no event read twice");
    assert_eq!(
        seen_set,
        written.iter().collect::<HashSet<_>>(),
        "no event skipped"
    );
}
both_backends!(
    a_tailing_reader_sees_every_event_of_concurrent_writers_exactly_once,
    a_tailing_reader_sees_every_event_of_concurrent_writers_exactly_once
);

async fn concurrent_appends_to_one_stream_have_one_winner_per_version(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let rounds = 4;
    for version in 0..rounds {
        let racers: Vec<_> = (0..32)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    log.append(&[append(
                        stream("contended"),
                        version,
                        vec![event(&format!("{version}-{i}"))],
                    )])
                    .await
                })
            })
            .collect();
        let mut winners = 0;
        let mut conflicts = 0;
        for racer in racers {
            match racer.await.unwrap() {
                Ok(_) => winners += 1,
                Err(AppendError::Conflict { stream }) => {
                    assert_eq!(stream.unwrap().aggregate_id, "contended");
                    conflicts += 1;
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!((winners, conflicts), (1, 31), "round {version}");
    }
    let sequences: Vec<i64> = log
        .load(&stream("contended"), 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(sequences, (1..=rounds as i64).collect::<Vec<_>>());
}
both_backends!(
    concurrent_appends_to_one_stream_have_one_winner_per_version,
    concurrent_appends_to_one_stream_have_one_winner_per_version
);

async fn a_batch_with_one_conflicting_stream_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    log.append(&[append(stream("taken"), 0, vec![event("first")])])
        .await
        .unwrap();

    let batch = [
        append(stream("new-1"), 0, vec![event("x"), event("y")]),
        append(stream("taken"), 0, vec![event("stale")]),
        append(stream("new-2"), 0, vec![event("z")]),
    ];
    match log.append(&batch).await {
        Err(AppendError::Conflict {
            stream: Some(conflicting),
        }) => {
            assert_eq!(conflicting.aggregate_id, "taken")
        }
        other => panic!("expected a conflict on 'taken', got {other:?}"),
    }
    let (all, _) = read_at_least(&log, Cursor::START, 1).await;
    assert_eq!(all.len(), 1, "only the first event exists");
    assert!(log.load(&stream("new-1"), 0).await.unwrap().is_empty());
    assert!(log.load(&stream("new-2"), 0).await.unwrap().is_empty());

    // The same batch with the right version commits every stream at once.
    let mut batch = batch;
    batch[1].expected_version = 1;
    let appended = log.append(&batch).await.unwrap();
    assert_eq!(appended.events.len(), 4);
    assert_eq!(log.version(&stream("taken")).await.unwrap(), 2);
}
both_backends!(
    a_batch_with_one_conflicting_stream_writes_nothing,
    a_batch_with_one_conflicting_stream_writes_nothing
);

async fn every_event_carries_its_metadata(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let mut meta = metadata();
    meta.correlation_id = "corr-1".into();
    meta.idempotency_key = Some("key-1".into());
    let appended = log
        .append(&[StreamAppend {
            metadata: meta.clone(),
            ..append(stream("m"), 0, vec![event("one"), event("two")])
        }])
        .await
        .unwrap();
    let (stored, _) = read_at_least(&log, Cursor::START, 2).await;
    let returned: Vec<RecordedEvent> = appended.events.iter().map(|e| (**e).clone()).collect();
    assert_eq!(stored, returned, "what was returned is what was stored");
    for event in stored {
        assert_eq!(event.tenant_id, "tenant-a");
        assert_eq!(event.event_metadata().unwrap(), meta);
        assert_eq!(event.metadata["actor"], "key_test");
        assert_eq!(event.metadata["requestId"], "req_test");
        assert_eq!(event.metadata["correlationId"], "corr-1");
    }
    // A reader that leaves the metadata out (a rebuild) gets the same events, without it.
    let reader = db.log().await;
    let lean = reader
        .read_after_without_metadata(Cursor::START, 10)
        .await
        .unwrap();
    assert_eq!(lean.len(), 2);
    for (lean, whole) in lean.into_iter().zip(returned) {
        assert_eq!(*lean.metadata, serde_json::Value::Null);
        assert_eq!(
            lean,
            RecordedEvent {
                metadata: serde_json::Value::Null.into(),
                ..whole
            }
        );
    }
    reader.db().close().await;
}
both_backends!(
    every_event_carries_its_metadata,
    every_event_carries_its_metadata
);

/// The current shape of the test's event: version 2.0 renamed `name` to `newName`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum WidgetEvent {
    WidgetRenamed {
        #[serde(rename = "newName")]
        new_name: String,
    },
}

impl cqrs_es::DomainEvent for WidgetEvent {
    fn event_type(&self) -> String {
        "WidgetRenamed".into()
    }
    fn event_version(&self) -> String {
        "2.0".into()
    }
}

async fn a_stored_version_1_event_loads_as_version_2(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upcaster = SemanticVersionEventUpcaster::new(
        "WidgetRenamed",
        "2.0",
        Box::new(|mut payload| {
            let name = payload["name"].take();
            json!({ "newName": name })
        }),
    );
    let log = db.log_with(vec![Box::new(upcaster)]).await;
    log.append(&[append(stream("old"), 0, vec![event("legacy")])])
        .await
        .unwrap();

    let loaded = log.load(&stream("old"), 0).await.unwrap();
    // cqrs-es's upcaster writes the full semantic version.
    assert_eq!(loaded[0].event_version, "2.0.0");
    assert_eq!(
        loaded[0].decode::<WidgetEvent>().unwrap(),
        WidgetEvent::WidgetRenamed {
            new_name: "legacy".into()
        }
    );
    let (tailed, _) = read_at_least(&log, Cursor::START, 1).await;
    assert_eq!(*tailed[0].payload, json!({ "newName": "legacy" }));

    // The stored row itself is unchanged: upcasting happens on read.
    let plain = db.log().await;
    assert_eq!(
        plain.load(&stream("old"), 0).await.unwrap()[0].event_version,
        "1.0"
    );
}
both_backends!(
    a_stored_version_1_event_loads_as_version_2,
    a_stored_version_1_event_loads_as_version_2
);

async fn group_commit_keeps_each_command_s_outcome(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    log.start_group_commit();
    // 60 concurrent commands: 58 on streams of their own, and two that race for one stream
    // at the same version. Whatever groups form, exactly one of the two wins, nothing else
    // fails, and every accepted command's events are in the log.
    let commits = (0..60).map(|i| {
        let log = log.clone();
        async move {
            let id = if i >= 58 {
                "contested".to_string()
            } else {
                format!("w{i}")
            };
            let batch = vec![append(stream(&id), 0, vec![event(&format!("n{i}"))])];
            let response = move |_: &eventlog::unit_of_work::Committed| {
                eventlog::idempotency::StoredResponse {
                    status: 200,
                    headers: Vec::new(),
                    body: Vec::new(),
                }
            };
            let commit = eventlog::group_commit::Commit {
                batch,
                ..Default::default()
            };
            log.commit_grouped(commit, Box::new(response)).await
        }
    });
    let results = futures::future::join_all(commits).await;
    let mut accepted = 0;
    let mut conflicts = 0;
    for result in &results {
        match result {
            Ok((committed, _)) => {
                accepted += 1;
                assert_eq!(committed.appended.events.len(), 1);
            }
            Err(eventlog::unit_of_work::CommitError::Conflict) => conflicts += 1,
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert_eq!((accepted, conflicts), (59, 1));
    for id in (0..58)
        .map(|i| format!("w{i}"))
        .chain(["contested".to_string()])
    {
        assert_eq!(log.load(&stream(&id), 0).await.unwrap().len(), 1, "{id}");
    }
}
both_backends!(
    group_commit_keeps_each_commands_outcome,
    group_commit_keeps_each_command_s_outcome
);

/// The commands of a group often decided on the same cached stream at the same version, and
/// the check sends each distinct read once; every read of a stream that moved must still be
/// reported, as the committer matches them command by command.
async fn repeated_reads_of_a_moved_stream_are_each_reported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    log.append(&[append(stream("moved"), 0, vec![event("a")])])
        .await
        .unwrap();
    log.append(&[append(stream("kept"), 0, vec![event("b")])])
        .await
        .unwrap();
    // Read at version 1 by three commands; then the stream moves on.
    log.append(&[append(stream("moved"), 1, vec![event("c")])])
        .await
        .unwrap();
    let reads = vec![
        (stream("moved"), 1),
        (stream("kept"), 1),
        (stream("moved"), 1),
        (stream("kept"), 1),
        (stream("moved"), 1),
        (stream("moved"), 2),
        (stream("never-written"), 0),
    ];
    let mut tx = log.db().begin().await.unwrap();
    let stale = log.stale_reads_in(&mut tx, &reads).await.unwrap();
    tx.rollback().await.unwrap();
    // Every read of "moved" is named, the one at its current version included, as the
    // caller matches stale streams by name; "kept" and the empty stream are current.
    assert_eq!(stale, vec![stream("moved"); 4]);
}
both_backends!(
    repeated_reads_of_a_moved_stream_are_each_reported,
    repeated_reads_of_a_moved_stream_are_each_reported
);

/// A command decided on a stream it did not read (a cached entity type) commits only while
/// that stream is at the version it decided on; the check rides in the insert. A stale read
/// writes nothing, whatever the batch's size (the check is in its first statement of
/// several); in a group, only the commands whose reads moved are refused.
async fn an_append_whose_read_moved_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    log.append(&[append(stream("schema"), 0, vec![event("v1")])])
        .await
        .unwrap();
    log.append(&[append(stream("schema"), 1, vec![event("v2")])])
        .await
        .unwrap();
    let stale = vec![(stream("never-written"), 0), (stream("schema"), 1)];
    let fresh = vec![
        (stream("schema"), 2),
        (stream("never-written"), 0),
        (stream("schema"), 2),
    ];
    // 501 events: two insert statements.
    let big = |id: &str| {
        vec![append(
            stream(id),
            0,
            (0..501).map(|n| event(&format!("e{n}"))).collect(),
        )]
    };
    for (batch, reads, writes) in [
        (big("big-stale"), &stale, false),
        (
            vec![append(stream("small-stale"), 0, vec![event("x")])],
            &stale,
            false,
        ),
        (Vec::new(), &stale, false),
        (big("big-fresh"), &fresh, true),
        (
            vec![append(stream("small-fresh"), 0, vec![event("x")])],
            &fresh,
            true,
        ),
        (Vec::new(), &fresh, true),
    ] {
        let mut tx = log.db().begin().await.unwrap();
        let appended = log
            .append_unless_moved_in(&mut tx, &batch, reads)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let expected: usize = batch.iter().map(|a| a.events.len()).sum();
        match appended {
            Some(appended) => {
                assert!(writes, "a stale read was let through");
                assert_eq!(appended.events.len(), expected);
            }
            None => assert!(!writes, "a fresh read was refused"),
        }
        for append in &batch {
            let stored = log.load(&append.stream, 0).await.unwrap();
            assert_eq!(stored.len(), if writes { expected } else { 0 });
            // In the order given: positions grow with sequences.
            assert!(
                stored
                    .windows(2)
                    .all(|pair| pair[0].sequence < pair[1].sequence
                        && pair[0].cursor < pair[1].cursor)
            );
        }
    }

    // Concurrent commands through the committer: those that decided on the moved stream are
    // refused, those that decided on a current one committed, however the groups form.
    log.append(&[append(stream("current"), 0, vec![event("c")])])
        .await
        .unwrap();
    log.start_group_commit();
    let commits = (0..40).map(|i| {
        let log = log.clone();
        async move {
            let commit = eventlog::group_commit::Commit {
                batch: vec![append(stream(&format!("g{i}")), 0, vec![event("x")])],
                key: None,
                reads: vec![if i % 2 == 0 {
                    (stream("schema"), 1)
                } else {
                    (stream("current"), 1)
                }],
            };
            let response =
                |_: &eventlog::unit_of_work::Committed| eventlog::idempotency::StoredResponse {
                    status: 200,
                    headers: Vec::new(),
                    body: Vec::new(),
                };
            (i, log.commit_grouped(commit, Box::new(response)).await)
        }
    });
    for (i, result) in futures::future::join_all(commits).await {
        let stored = log.load(&stream(&format!("g{i}")), 0).await.unwrap();
        match result {
            Ok(_) if i % 2 == 1 => assert_eq!(stored.len(), 1),
            Err(eventlog::unit_of_work::CommitError::Conflict) if i % 2 == 0 => {
                assert!(stored.is_empty())
            }
            other => panic!("command {i}: {:?}", other.map(|_| ())),
        }
    }
}
both_backends!(
    an_append_whose_read_moved_writes_nothing,
    an_append_whose_read_moved_writes_nothing
);

/// The storage port: one statement, bound and read the same way on both engines, in a
/// transaction and on the read pool, by column name, by position and as a tuple.
async fn a_statement_reads_back_what_it_bound_on_either_backend(backend: Backend) {
    use eventlog::Statement;
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let mut tx = log.db().begin().await.unwrap();
    tx.execute(Statement::new(
        "CREATE TABLE port_check (name TEXT PRIMARY KEY, count BIGINT, ok BOOLEAN, \
         at TIMESTAMPTZ, doc JSONB, note TEXT)",
    ))
    .await
    .unwrap();
    let sql = format!(
        "INSERT INTO port_check (name, count, ok, at, doc, note) VALUES {}",
        tx.backend().values(2, 6)
    );
    let mut insert = Statement::new(&sql);
    for (name, count) in [("b", -7_i64), ("a", i64::MAX)] {
        insert.push(name);
        insert.push(count);
        insert.push(count > 0);
        insert.push(at);
        insert.push(sqlx::types::Json(json!({ "name": name, "deep": [[1]] })));
        insert.push(None::<String>);
    }
    assert_eq!(tx.execute(insert).await.unwrap(), 2, "rows changed");
    let in_tx: Vec<(String, i64)> = tx
        .fetch_all_as(Statement::new(
            "SELECT name, count FROM port_check ORDER BY name",
        ))
        .await
        .unwrap();
    assert_eq!(in_tx, [("a".into(), i64::MAX), ("b".into(), -7)]);
    tx.commit().await.unwrap();

    let row = log
        .db()
        .fetch_one(Statement::new("SELECT * FROM port_check WHERE name = $1").bind("b"))
        .await
        .unwrap();
    assert_eq!(row.try_get::<i64, _>("count").unwrap(), -7);
    assert!(!row.try_get::<bool, _>("ok").unwrap());
    assert_eq!(
        row.try_get::<chrono::DateTime<chrono::Utc>, _>("at")
            .unwrap(),
        at
    );
    let doc: sqlx::types::Json<serde_json::Value> = row.try_get("doc").unwrap();
    assert_eq!(doc.0, json!({ "name": "b", "deep": [[1]] }));
    assert_eq!(row.try_get::<Option<String>, _>("note").unwrap(), None);
    assert_eq!(row.try_get::<String, _>(0).unwrap(), "b", "by position");
    assert!(
        log.db()
            .fetch_optional(Statement::new("SELECT name FROM port_check WHERE name = $1").bind("z"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        log.db()
            .fetch_one(Statement::new("SELECT name FROM port_check WHERE name = $1").bind("z"))
            .await,
        Err(sqlx::Error::RowNotFound)
    ));
}
both_backends!(
    a_statement_reads_back_what_it_bound_on_either_backend,
    a_statement_reads_back_what_it_bound_on_either_backend
);

async fn a_bounded_backlog_counts_up_to_its_limit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log = db.log().await;
    let batch: Vec<StreamAppend> = (0..30)
        .map(|i| append(stream(&format!("w{i}")), 0, vec![event("a")]))
        .collect();
    log.append(&batch).await.unwrap();
    let (everything, _) = read_at_least(&log, Cursor::START, 30).await;
    let (all, oldest) = log.backlog(Cursor::START).await.unwrap();
    assert_eq!(all, 30);
    let (bounded, bounded_oldest) = log.backlog_up_to(Cursor::START, 10).await.unwrap();
    assert_eq!((bounded, bounded_oldest), (10, oldest));
    assert_eq!(oldest, Some(everything[0].recorded_at));
    // Near the end the bound does not matter, and at the end nothing is behind.
    let (tail, _) = log.backlog_up_to(everything[24].cursor, 10).await.unwrap();
    assert_eq!(tail, 5);
    let (none, no_oldest) = log.backlog_up_to(everything[29].cursor, 10).await.unwrap();
    assert_eq!((none, no_oldest), (0, None));
}
both_backends!(
    a_bounded_backlog_counts_up_to_its_limit,
    a_bounded_backlog_counts_up_to_its_limit
);

/// The events a process committed are read back from memory (see `eventlog::recent`) exactly
/// as another process reads them from the database: same ids, positions, payloads (deep,
/// large numbers, text in any script), metadata and times; a window that holds an event
/// this process did not write is read from the database whole.
async fn events_kept_in_memory_read_as_the_log_stores_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let writer = db.log().await;
    let mut deep = json!("leaf");
    for _ in 0..100 {
        deep = json!({ "next": deep });
    }
    let payloads = [
        json!({ "name": "plain" }),
        json!({ "big": 18446744073709551615u64, "neg": -9007199254740993i64, "float": 1.5e300, "tiny": 5e-324 }),
        json!({ "text": "Grüße, 世界, 🚀, \"quoted\" \\ slash", "empty": {}, "list": [null, true, 0.1] }),
        deep,
    ];
    let events: Vec<NewEvent> = payloads
        .iter()
        .map(|payload| NewEvent {
            payload: payload.clone().into(),
            ..event("kept")
        })
        .collect();
    writer
        .append(&[append(stream("kept"), 0, events)])
        .await
        .unwrap();
    let (from_memory, _) = read_at_least(&writer, Cursor::START, payloads.len()).await;
    let reader = db.log().await;
    let (from_database, _) = read_at_least(&reader, Cursor::START, payloads.len()).await;
    assert_eq!(from_memory.len(), payloads.len());
    assert_eq!(from_memory, from_database);

    // Another process's event in the window: the writer reads the window from the database.
    reader
        .append(&[append(stream("other"), 0, vec![event("elsewhere")])])
        .await
        .unwrap();
    writer
        .append(&[append(
            stream("kept"),
            payloads.len() as u64,
            vec![event("after")],
        )])
        .await
        .unwrap();
    let (mixed, _) = read_at_least(&writer, Cursor::START, payloads.len() + 2).await;
    let (stored, _) = read_at_least(&reader, Cursor::START, payloads.len() + 2).await;
    assert_eq!(mixed, stored);
    assert!(mixed.iter().any(|e| e.payload["name"] == "elsewhere"));
    writer.db().close().await;
    reader.db().close().await;
}
both_backends!(
    events_kept_in_memory_read_as_the_log_stores_them,
    events_kept_in_memory_read_as_the_log_stores_them
);

/// Every committed append is announced on PostgreSQL's `NOTIFY` channel, once per
/// transaction however many insert statements it took, and a rolled-back one never is:
/// projectors and relays of other processes wake up on it.
#[tokio::test]
async fn commits_are_announced_once_and_rollbacks_never() {
    let db = TestDb::new(Backend::Postgres).await;
    let log = db.log().await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener
        .listen(eventlog::store::NOTIFY_CHANNEL)
        .await
        .unwrap();

    let mut rolled_back = log.db().begin().await.unwrap();
    log.append_in(
        &mut rolled_back,
        &[append(stream("gone"), 0, vec![event("gone")])],
    )
    .await
    .unwrap();
    rolled_back.rollback().await.unwrap();
    // More events than one insert statement takes, in one transaction.
    let many: Vec<StreamAppend> = (0..1_200)
        .map(|i| append(stream(&format!("w{i}")), 0, vec![event("x")]))
        .collect();
    log.append(&many).await.unwrap();
    let marker = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(eventlog::store::NOTIFY_CHANNEL)
        .execute(&marker)
        .await
        .unwrap();

    let commit = received(&mut listener).await;
    assert_eq!(
        commit.payload(),
        "",
        "the commit's announcement comes first"
    );
    let next = received(&mut listener).await;
    assert_eq!(
        next.payload(),
        "marker",
        "one announcement for the commit, none for the rollback"
    );
}

async fn received(listener: &mut sqlx::postgres::PgListener) -> sqlx::postgres::PgNotification {
    tokio::time::timeout(Duration::from_secs(20), listener.recv())
        .await
        .expect("a notification")
        .unwrap()
}

/// Another process's append wakes this process's readers through `LISTEN` (its own appends
/// wake them in-process at the commit).
#[tokio::test]
async fn another_process_append_wakes_the_readers_here() {
    let db = TestDb::new(Backend::Postgres).await;
    let here = db.log().await;
    let there = db.log().await;
    let eventlog::Db::Postgres(pool) = here.db().clone() else {
        unreachable!("a PostgreSQL test database");
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = workers::listener::spawn(pool, here.clone(), shutdown.clone());
    let mut woken = here.subscribe();
    // The listener wakes the readers once it listens (notifications from before are lost).
    tokio::time::timeout(Duration::from_secs(20), woken.changed())
        .await
        .expect("the listener starts")
        .unwrap();
    woken.borrow_and_update();
    there
        .append(&[append(stream("elsewhere"), 0, vec![event("x")])])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), woken.changed())
        .await
        .expect("another process's append wakes the readers here")
        .unwrap();
    shutdown.cancel();
    listener.await.unwrap();
}
