//! Rebuilding a projection from the start of the log.
//!
//! The live tables keep serving while the rebuild fills shadow copies (`<table>__rebuild`) in
//! ordinary batches under a checkpoint of its own. Then, in one transaction holding the live
//! projector's lock, the rebuild applies whatever arrived meanwhile, drops the live tables,
//! renames the shadows into their place, restores the index names, and moves the live
//! checkpoint to where the rebuild stopped. Readers see the old tables or the new ones, never
//! a half-built one.

use eventlog::{Cursor, Db, EventLog, Tx};
use projections::{ProjectionError, Projector, Target, checkpoints};
use sqlx::Row;

use crate::runner::{self, BatchOutcome};

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events replayed.
    pub events: u64,
    /// The projector's checkpoint after the swap.
    pub cursor: Cursor,
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

    let mut replayed = 0u64;
    on_progress(0, total);
    loop {
        match runner::run_batch(
            log,
            projector,
            Target::Rebuild,
            &shadow_checkpoint,
            batch_size,
        )
        .await?
        {
            BatchOutcome::Applied { events, .. } => {
                replayed += events as u64;
                on_progress(replayed, total.max(replayed));
            }
            BatchOutcome::Idle => break,
            BatchOutcome::Busy => {
                return Err(ProjectionError::Database(sqlx::Error::Protocol(format!(
                    "another rebuild of '{name}' is running"
                ))));
            }
        }
    }

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
    })
}

/// Creates empty shadow copies of `tables`. Returns, per table, the index definitions that
/// the shadow does not get by itself and that the swap must recreate (SQLite only).
async fn prepare_shadow_tables(
    tx: &mut Tx,
    tables: &[&str],
) -> Result<Vec<Vec<String>>, sqlx::Error> {
    let mut captured = Vec::with_capacity(tables.len());
    for table in tables {
        let shadow = Target::Rebuild.table(table);
        match tx {
            Tx::Postgres(conn) => {
                sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}"))
                    .execute(&mut **conn)
                    .await?;
                sqlx::query(&format!(
                    "CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL)"
                ))
                .execute(&mut **conn)
                .await?;
                captured.push(Vec::new());
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
                            return Err(sqlx::Error::Protocol(format!(
                                "unexpected definition of table {table}: {sql}"
                            )));
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
            // LIKE … INCLUDING ALL named the shadow's indexes after the shadow table; each gets
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
