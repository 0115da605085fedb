//! Builds the indexes of indexed and unique entity fields in the background.
//!
//! Declaring an indexed field answers at once: the `entity_types` projector registers the index
//! in `entity_indexes` as `building`, and this worker builds it. On PostgreSQL the build is
//! `CREATE INDEX CONCURRENTLY`, so records are written and read meanwhile (queries on the field
//! work, without the index); one gateway process builds a given index at a time (a session
//! advisory lock), and the invalid leftover of a failed concurrent build is dropped before
//! the next try, and the table is analyzed once the index is there (the planner's statistics
//! of the indexed expression). SQLite has no concurrent builds: the index is built in a write
//! transaction.
//! A failed build is marked `failed` with its error and tried again, up to
//! [`MAX_ATTEMPTS`] times, a minute apart.

use std::time::Duration;

use chrono::Utc;
use eventlog::{Backend, Db, Statement};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Builds of one index after which a failure stays `failed`.
pub const MAX_ATTEMPTS: i32 = 5;

/// Time between two tries of a failed build.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// An index waiting to be built.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
struct Pending {
    name: String,
    definition: String,
}

/// Every `interval` (and at start), builds the indexes waiting to be built, until `shutdown`.
pub fn spawn(db: Db, interval: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match build_pending(&db).await {
                Ok(0) => {}
                Ok(built) => tracing::info!(built, "entity indexes built"),
                Err(error) => tracing::warn!(%error, "building entity indexes failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}

/// Builds every index waiting (new ones, and failed ones due for another try); returns how
/// many became ready.
pub async fn build_pending(db: &Db) -> Result<usize, sqlx::Error> {
    let retry_before = Utc::now() - chrono::Duration::from_std(RETRY_AFTER).unwrap_or_default();
    let pending: Vec<Pending> = db
        .fetch_all_as(
            Statement::new(
                "SELECT name, definition FROM entity_indexes \
                 WHERE status = 'building' \
                    OR (status = 'failed' AND attempts < $1 AND updated_at < $2) \
                 ORDER BY name",
            )
            .bind(MAX_ATTEMPTS)
            .bind(retry_before),
        )
        .await?;
    let mut built = 0;
    for index in pending {
        let outcome = match db {
            Db::Postgres(pool) => build_concurrently(pool, &index).await,
            Db::Sqlite(_) => build_in_transaction(db, &index).await,
        };
        match outcome {
            Ok(true) => {
                mark(db, &index.name, None).await?;
                built += 1;
            }
            // Another process is building it.
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(index = %index.name, %error, "an entity index could not be built");
                mark(db, &index.name, Some(&error.to_string())).await?;
            }
        }
    }
    Ok(built)
}

/// `CREATE INDEX CONCURRENTLY` on a connection of its own (it cannot run in a transaction),
/// under a session advisory lock on the index's name. False when another process holds it.
async fn build_concurrently(pool: &sqlx::PgPool, index: &Pending) -> Result<bool, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let key = format!("entity-index:{}", index.name);
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&key)
        .fetch_one(&mut *connection)
        .await?;
    if !locked {
        return Ok(false);
    }
    let result = async {
        // A concurrent build that failed leaves an invalid index of that name behind, which
        // `IF NOT EXISTS` would take for the finished one.
        let invalid: Option<bool> = sqlx::query_scalar(
            "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
        )
        .bind(&index.name)
        .fetch_optional(&mut *connection)
        .await?;
        if invalid == Some(true) {
            sqlx::query(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS \"{}\"",
                index.name
            ))
            .execute(&mut *connection)
            .await?;
        }
        sqlx::query(&concurrent(&index.definition))
            .execute(&mut *connection)
            .await?;
        // PostgreSQL keeps statistics of an index's expression only from the next ANALYZE:
        // until then it guesses how selective a filter on the field is, and a guess off by
        // twenty times turned one-hop filters from an index walk of 3 ms into a 400 ms join.
        // Reads and writes go on during an ANALYZE.
        sqlx::query("ANALYZE entities")
            .execute(&mut *connection)
            .await?;
        Ok::<_, sqlx::Error>(true)
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(&key)
        .execute(&mut *connection)
        .await;
    result
}

/// The concurrent form of a `CREATE INDEX` statement.
fn concurrent(definition: &str) -> String {
    match definition.strip_prefix("CREATE INDEX ") {
        Some(rest) if !rest.starts_with("CONCURRENTLY") => {
            format!("CREATE INDEX CONCURRENTLY {rest}")
        }
        _ => definition.to_string(),
    }
}

/// The build on SQLite: one write transaction.
async fn build_in_transaction(db: &Db, index: &Pending) -> Result<bool, sqlx::Error> {
    debug_assert_eq!(db.backend(), Backend::Sqlite);
    let mut tx = db.begin().await?;
    tx.execute(Statement::new(&index.definition)).await?;
    tx.commit().await?;
    Ok(true)
}

/// Records a build's outcome: ready, or failed with `error`.
async fn mark(db: &Db, name: &str, error: Option<&str>) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    let statement = match error {
        None => Statement::new(
            "UPDATE entity_indexes SET status = 'ready', error = NULL, updated_at = $2 \
             WHERE name = $1",
        )
        .bind(name)
        .bind(Utc::now()),
        Some(error) => Statement::new(
            "UPDATE entity_indexes SET status = 'failed', error = $3, \
             attempts = attempts + 1, updated_at = $2 WHERE name = $1",
        )
        .bind(name)
        .bind(Utc::now())
        .bind(error),
    };
    tx.execute(statement).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_concurrent_form_of_a_definition() {
        assert_eq!(
            super::concurrent("CREATE INDEX IF NOT EXISTS \"x\" ON entities (a)"),
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"x\" ON entities (a)"
        );
        assert_eq!(
            super::concurrent("CREATE INDEX CONCURRENTLY IF NOT EXISTS x ON t (a)"),
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS x ON t (a)"
        );
    }
}
