//! Rebuilding a projection from the start of the log.
//!
//! The live tables keep serving while the rebuild fills shadow copies (`<table>__rebuild`) in
//! ordinary batches under a checkpoint of its own. Then, in one transaction holding the live
//! projector's lock, the rebuild applies whatever arrived meanwhile, drops the live tables,
//! renames the shadows into their place, restores the index names, and moves the live
//! checkpoint to where the rebuild stopped. Readers see the old tables or the new ones, never
//! a half-built one.

use std::sync::Arc;

use eventlog::{Cursor, Db, EventLog, RecordedEvent, Tx};
use projections::{ProjectionError, Projector, Target, checkpoints};
use sqlx::Row;

use crate::runner;

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events replayed.
    pub events: u64,
    /// The projector's checkpoint after the swap.
    pub cursor: Cursor,
    /// Time spent filling the shadow tables from the log.
    pub fill: std::time::Duration,
    /// Time spent building the shadow's secondary indexes before the swap (PostgreSQL).
    pub indexes: std::time::Duration,
    /// Time the swap held the live projector's lock: the catch-up, the table swap (on SQLite
    /// with the index builds) and the commit.
    pub swap: std::time::Duration,
}

/// Replays `projector` from the start of the log and swaps the result in. `on_progress` is
/// called after every batch with the events replayed so far and the total expected.
pub async fn rebuild(
    log: &EventLog,
    projector: &dyn Projector,
    batch_size: usize,
    mut on_progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, ProjectionError> {
    let name = projector.name();
    let shadow_checkpoint = Target::Rebuild.table(name);
    let (total, _) = log.backlog(Cursor::START).await?;

    let mut tx = log.db().begin().await?;
    let captured = prepare_shadow_tables(&mut tx, projector.tables()).await?;
    checkpoints::delete_in(&mut tx, &shadow_checkpoint).await?;
    checkpoints::write_in(&mut tx, &shadow_checkpoint, Cursor::START).await?;
    tx.commit().await?;

    // The log is read ahead by a task of its own (the events up to the horizon are final),
    // so reading the next batch overlaps with applying this one.
    let (batches, mut ready) =
        tokio::sync::mpsc::channel::<Result<Vec<RecordedEvent>, sqlx::Error>>(2);
    let reader = {
        let log = log.clone();
        let metadata = projector.reads_metadata();
        tokio::spawn(async move {
            let mut cursor = Cursor::START;
            loop {
                let batch = if metadata {
                    log.read_after(cursor, batch_size).await
                } else {
                    log.read_after_without_metadata(cursor, batch_size).await
                };
                if let Ok(events) = &batch {
                    match events.last() {
                        Some(last) => cursor = last.cursor,
                        None => break,
                    }
                }
                let failed = batch.is_err();
                if batches.send(batch).await.is_err() || failed {
                    break;
                }
            }
        })
    };
    let mut replayed = 0u64;
    let started = std::time::Instant::now();
    on_progress(0, total);
    while let Some(batch) = ready.recv().await {
        let events: Vec<Arc<RecordedEvent>> = batch?.into_iter().map(Arc::new).collect();
        apply_batch(log, projector, &shadow_checkpoint, &events).await?;
        replayed += events.len() as u64;
        on_progress(replayed, total.max(replayed));
    }
    let _ = reader.await;
    let fill = started.elapsed();
    // PostgreSQL: the shadow's other indexes, built over the filled tables (outside the swap,
    // so the live projector waits only for the catch-up), two at a time on connections of
    // their own.
    let mut captured = captured;
    if let Db::Postgres(pool) = log.db() {
        let statements: Vec<String> = captured.iter_mut().flat_map(|s| s.drain(..)).collect();
        use futures::StreamExt;
        let mut builds = futures::stream::iter(
            statements
                .iter()
                .map(|sql| async move { sqlx::query(sql).execute(pool).await }),
        )
        .buffer_unordered(2);
        while let Some(built) = builds.next().await {
            built?;
        }
    }

    let indexes = started.elapsed() - fill;

    // The swap: everything below happens under the live projector's lock, in one transaction.
    let mut tx = log.db().begin().await?;
    runner::lock(&mut tx, name, true).await?;
    let mut cursor = checkpoints::read_in(&mut tx, &shadow_checkpoint)
        .await?
        .unwrap_or(Cursor::START);
    loop {
        let events = log.read_after_in(&mut tx, cursor, batch_size).await?;
        let Some(last) = events.last() else { break };
        cursor = last.cursor;
        projector.apply(&mut tx, Target::Rebuild, &events).await?;
        replayed += events.len() as u64;
    }
    for (table, indexes) in projector.tables().iter().zip(captured) {
        swap_in(&mut tx, table, indexes).await?;
    }
    checkpoints::write_in(&mut tx, name, cursor).await?;
    checkpoints::delete_in(&mut tx, &shadow_checkpoint).await?;
    tx.commit().await?;
    on_progress(replayed, total.max(replayed));
    Ok(RebuildReport {
        events: replayed,
        cursor,
        fill,
        indexes,
        swap: started.elapsed() - fill - indexes,
    })
}

/// Applies `events` to the shadow tables and moves the rebuild's checkpoint to the last of
/// them, in one transaction under the rebuild's lock.
async fn apply_batch(
    log: &EventLog,
    projector: &dyn Projector,
    checkpoint: &str,
    events: &[Arc<RecordedEvent>],
) -> Result<(), ProjectionError> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let mut tx = log.db().begin().await?;
    if !runner::lock(&mut tx, checkpoint, false).await? {
        tx.rollback().await?;
        return Err(ProjectionError::Busy(projector.name()));
    }
    projector.apply(&mut tx, Target::Rebuild, events).await?;
    checkpoints::write_in(&mut tx, checkpoint, last.cursor).await?;
    tx.commit().await?;
    Ok(())
}

/// Creates empty shadow copies of `tables`. Returns, per table, the index definitions that
/// the shadow does not get by itself: on PostgreSQL, the indexes to build on the filled
/// shadow; on SQLite, the live indexes that the swap recreates.
async fn prepare_shadow_tables(
    tx: &mut Tx,
    tables: &[&str],
) -> Result<Vec<Vec<String>>, ProjectionError> {
    let mut captured = Vec::with_capacity(tables.len());
    for table in tables {
        let shadow = Target::Rebuild.table(table);
        match tx {
            Tx::Postgres(conn) => {
                sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
                    .execute(&mut **conn)
                    .await?;
                // The shadow gets its primary key and unique constraints now (upserts need
                // them) and its other indexes once it is filled: one sort instead of an
                // update per row.
                sqlx::query(&format!(
                    "CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL EXCLUDING INDEXES)"
                ))
                .execute(&mut **conn)
                .await?;
                let constraints: Vec<String> = sqlx::query_scalar(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                     WHERE conrelid = $1::regclass AND contype IN ('p', 'u') ORDER BY conname",
                )
                .bind(*table)
                .fetch_all(&mut **conn)
                .await?;
                for constraint in constraints {
                    sqlx::query(&format!("ALTER TABLE {shadow} ADD {constraint}"))
                        .execute(&mut **conn)
                        .await?;
                }
                let deferred: Vec<String> = sqlx::query_scalar(
                    "SELECT i.indexdef FROM pg_indexes i \
                     WHERE i.schemaname = current_schema() AND i.tablename = $1 \
                     AND NOT EXISTS (SELECT 1 FROM pg_constraint c \
                     WHERE c.conindid = format('%I.%I', i.schemaname, i.indexname)::regclass) \
                     ORDER BY i.indexname",
                )
                .bind(*table)
                .fetch_all(&mut **conn)
                .await?;
                // `CREATE [UNIQUE] INDEX <name> ON <table> USING …`, rebuilt on the shadow
                // (the swap gives it back its name).
                // Named here: indexes built at the same time would race for one generated name.
                captured.push(
                    deferred
                        .iter()
                        .enumerate()
                        .filter_map(|(n, definition)| {
                            let (head, body) = definition.split_once(" USING ")?;
                            let unique = if head.starts_with("CREATE UNIQUE") {
                                "UNIQUE "
                            } else {
                                ""
                            };
                            Some(format!(
                                "CREATE {unique}INDEX {shadow}_d{n} ON {shadow} USING {body}"
                            ))
                        })
                        .collect(),
                );
            }
            Tx::Sqlite(conn) => {
                sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
                    .execute(&mut **conn)
                    .await?;
                let rows = sqlx::query(
                    "SELECT type, sql FROM sqlite_master WHERE tbl_name = $1 AND sql IS NOT NULL",
                )
                .bind(*table)
                .fetch_all(&mut **conn)
                .await?;
                let mut indexes = Vec::new();
                for row in rows {
                    let kind: String = row.try_get("type")?;
                    let sql: String = row.try_get("sql")?;
                    if kind == "table" {
                        // A table renamed by an earlier rebuild has its name quoted.
                        let Some(rest) = sql
                            .strip_prefix(&format!("CREATE TABLE {table} "))
                            .or_else(|| sql.strip_prefix(&format!("CREATE TABLE \"{table}\" ")))
                        else {
                            return Err(ProjectionError::UnexpectedTable {
                                table: table.to_string(),
                                definition: sql,
                            });
                        };
                        sqlx::query(&format!("CREATE TABLE {shadow} {rest}"))
                            .execute(&mut **conn)
                            .await?;
                    } else if kind == "index" {
                        indexes.push(sql);
                    }
                }
                captured.push(indexes);
            }
        }
    }
    Ok(captured)
}

/// Replaces `table` by its shadow inside `tx`, keeping index names.
async fn swap_in(tx: &mut Tx, table: &str, sqlite_indexes: Vec<String>) -> Result<(), sqlx::Error> {
    let shadow = Target::Rebuild.table(table);
    match tx {
        Tx::Postgres(conn) => {
            // The shadow's indexes are named after the shadow table; each gets
            // back the name of the live index with the same definition (renaming a
            // constraint's index renames the constraint).
            let definitions = |table: &str| {
                sqlx::query_as::<_, (String, String)>(
                    "SELECT indexname::text, indexdef FROM pg_indexes \
                     WHERE schemaname = current_schema() AND tablename = $1",
                )
                .bind(table.to_string())
            };
            let live = definitions(table).fetch_all(&mut **conn).await?;
            let shadowed = definitions(&shadow).fetch_all(&mut **conn).await?;
            // `CREATE INDEX <name> ON <schema>.<table> USING …`: the part after the table.
            let body = |definition: &str| {
                definition
                    .split_once(" USING ")
                    .map(|(_, rest)| rest.to_string())
                    .unwrap_or_default()
            };
            sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&mut **conn)
                .await?;
            sqlx::query(&format!("ALTER TABLE {shadow} RENAME TO {table}"))
                .execute(&mut **conn)
                .await?;
            let mut taken = std::collections::HashSet::new();
            for (name, definition) in shadowed {
                let unique = definition.starts_with("CREATE UNIQUE");
                let original = live.iter().find(|(live_name, live_definition)| {
                    !taken.contains(live_name)
                        && live_definition.starts_with("CREATE UNIQUE") == unique
                        && body(live_definition) == body(&definition)
                });
                let target = match original {
                    Some((live_name, _)) => live_name.clone(),
                    None => match name.strip_prefix(&shadow) {
                        Some(rest) => format!("{table}{rest}"),
                        None => continue,
                    },
                };
                taken.insert(target.clone());
                sqlx::query(&format!("ALTER INDEX \"{name}\" RENAME TO \"{target}\""))
                    .execute(&mut **conn)
                    .await?;
            }
        }
        Tx::Sqlite(conn) => {
            sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&mut **conn)
                .await?;
            sqlx::query(&format!("ALTER TABLE {shadow} RENAME TO {table}"))
                .execute(&mut **conn)
                .await?;
            for sql in sqlite_indexes {
                sqlx::query(&sql).execute(&mut **conn).await?;
            }
        }
    }
    Ok(())
}

/// The names of a table's indexes, sorted; used to check that a rebuild keeps them.
pub async fn index_names(db: &Db, table: &str) -> Result<Vec<String>, sqlx::Error> {
    let mut names: Vec<String> = match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT indexname::text FROM pg_indexes \
                 WHERE schemaname = current_schema() AND tablename = $1",
            )
            .bind(table)
            .fetch_all(pool)
            .await?
        }
        Db::Sqlite(pools) => {
            sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 \
                 AND name NOT LIKE 'sqlite_autoindex_%'",
            )
            .bind(table)
            .fetch_all(&pools.reader)
            .await?
        }
    };
    names.sort();
    Ok(names)
}
