//! Connection pools for either backend, migrations, and write transactions.
//!
//! The gateway speaks to PostgreSQL or SQLite with the same SQL wherever the two dialects
//! agree: a [`Statement`](crate::sql::Statement) runs on either (see [`crate::sql`]), so only
//! the statements that really differ are written twice, each beside its other half in the
//! module that owns the concern.
//!
//! SQLite has one writer at a time. The gateway gives it exactly one write connection and
//! opens every write transaction with `BEGIN IMMEDIATE`, so writes queue in the pool instead
//! of failing with `SQLITE_BUSY`, and the order of `global_position` is the commit order.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

/// Which database engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    /// The placeholders of a multi-row `VALUES` list, `rows` rows of `columns` values bound in
    /// order: `($1, $2), ($3, $4)` on PostgreSQL, `(?, ?), (?, ?)` on SQLite. (SQLite finds a
    /// numbered parameter's name by a scan of all of them, so binding thousands of `$n` costs
    /// time quadratic in their number; anonymous ones cost nothing.)
    pub fn values(self, rows: usize, columns: usize) -> String {
        let mut sql = String::with_capacity(rows * columns * 6);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..columns {
                if column > 0 {
                    sql.push_str(", ");
                }
                match self {
                    Backend::Postgres => {
                        sql.push('$');
                        push_decimal(&mut sql, row * columns + column + 1);
                    }
                    Backend::Sqlite => sql.push('?'),
                }
            }
            sql.push(')');
        }
        sql
    }

    /// [`Backend::values`] with each column cast to its type on PostgreSQL (`$1::text`), for a
    /// `VALUES` list that is not an `INSERT`'s, whose columns take no type from a table.
    pub fn typed_values(self, rows: usize, types: &[&str]) -> String {
        let Backend::Postgres = self else {
            return self.values(rows, types.len());
        };
        let mut sql = String::with_capacity(rows * types.len() * 12);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for (column, ty) in types.iter().enumerate() {
                if column > 0 {
                    sql.push_str(", ");
                }
                sql.push('$');
                push_decimal(&mut sql, row * types.len() + column + 1);
                sql.push_str("::");
                sql.push_str(ty);
            }
            sql.push(')');
        }
        sql
    }
}

/// Appends the decimal digits of `n` (what `write!(sql, "{n}")` does, without the formatting
/// machinery: statements of a few hundred rows have thousands of placeholders).
fn push_decimal(sql: &mut String, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        sql.push(char::from(digit));
    }
}

/// The SQLite pools: many readers, one writer.
#[derive(Debug, Clone)]
pub struct SqlitePools {
    pub reader: SqlitePool,
    pub writer: SqlitePool,
}

/// The advisory lock every write transaction of the gateway holds, shared, from its first
/// statement (PostgreSQL). Readers of the log take the oldest transaction id among its
/// holders in this database as their horizon (see `store::PG_HORIZON`): transactions in
/// other databases, and transactions in this one that are not the gateway's, never hold the
/// log's readers back. Taken before the transaction has an id, so a transaction that could
/// still append behind a reader always shows in `pg_locks` once it has one.
pub const APPENDER_LOCK: i64 = 0x0047_574C;

/// `BEGIN` and the appender lock, in one round trip.
const BEGIN_APPENDER: &str = "BEGIN; SELECT pg_advisory_xact_lock_shared(4675404)";

/// A PostgreSQL connection idle at least this long is tested (a round trip) before it is
/// used: the database may have restarted, or a proxy dropped the connection, while it sat in
/// the pool. One used more recently was tested when it came back (sqlx tests every
/// connection returned to the pool), so under load connections go out untested, a round
/// trip per transaction saved.
const TESTED_AFTER_IDLE: Duration = Duration::from_secs(1);

/// A handle on the gateway's database. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePools),
}

/// A write transaction on either backend.
#[derive(Debug)]
pub enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

/// Pool sizes and timeouts.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl Db {
    /// Connects to `url`: `postgres://…` or `sqlite://path` (`sqlite:` URLs and bare paths
    /// ending in `.db` also work). A SQLite file and its folder are created when missing.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Db, sqlx::Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(settings.acquire_timeout)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= TESTED_AFTER_IDLE {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await?;
            return Ok(Db::Postgres(pool));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
        }
        const SQLITE_ROW_BUFFER: usize = 1024;
        let base = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed transaction survives a power loss, so a 2xx means the events
            // are on disk.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // A connection's thread hands its rows over a bounded channel: at the default 50 it
            // stops and waits for the reading task every 50 rows, two context switches each
            // time, where a batch read from the log is hundreds of rows.
            .row_buffer_size(SQLITE_ROW_BUFFER);
        // A SQLite connection is a file, not a peer that can go away: no test before use (it
        // would be a round trip to the connection's thread).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(settings.acquire_timeout.max(Duration::from_secs(30)))
            .connect_with(base.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .test_before_acquire(false)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(base.read_only(true))
            .await?;
        Ok(Db::Sqlite(SqlitePools { reader, writer }))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies the embedded migrations of this backend (`migrations/postgres` or
    /// `migrations/sqlite`). Concurrent callers are safe: sqlx takes an advisory lock on
    /// PostgreSQL, and SQLite has one writer.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Db::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await,
            Db::Sqlite(pools) => {
                sqlx::migrate!("../migrations/sqlite")
                    .run(&pools.writer)
                    .await
            }
        }
    }

    /// Begins a write transaction. On PostgreSQL it announces itself as a possible appender
    /// first, before it has a transaction id (see [`APPENDER_LOCK`]).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => Tx::Postgres(pool.begin_with(BEGIN_APPENDER).await?),
            Db::Sqlite(pools) => Tx::Sqlite(pools.writer.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Db::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await?.rows_affected(),
            Db::Sqlite(pools) => sqlx::query("SELECT 1")
                .execute(&pools.reader)
                .await?
                .rows_affected(),
        };
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Db::Postgres(pool) => pool.close().await,
            Db::Sqlite(pools) => {
                pools.writer.close().await;
                pools.reader.close().await;
            }
        }
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.rollback().await,
            Tx::Sqlite(tx) => tx.rollback().await,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Tx::Postgres(_) => Backend::Postgres,
            Tx::Sqlite(_) => Backend::Sqlite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn values_number_placeholders_in_order() {
        assert_eq!(Backend::Postgres.values(1, 1), "($1)");
        assert_eq!(Backend::Postgres.values(2, 3), "($1, $2, $3), ($4, $5, $6)");
        let many = Backend::Postgres.values(500, 10);
        assert!(many.starts_with("($1, $2, "));
        assert!(many.ends_with("$4998, $4999, $5000)"));
        assert_eq!(many.matches('$').count(), 5000);
        assert_eq!(Backend::Sqlite.values(2, 2), "(?, ?), (?, ?)");
    }

    #[test]
    fn typed_values_cast_on_postgres_only() {
        assert_eq!(
            Backend::Postgres.typed_values(2, &["text", "int4"]),
            "($1::text, $2::int4), ($3::text, $4::int4)"
        );
        assert_eq!(
            Backend::Sqlite.typed_values(2, &["text", "int4"]),
            "(?, ?), (?, ?)"
        );
    }
}

#[cfg(test)]
mod appender_lock_tests {
    #[test]
    fn the_begin_statement_takes_the_appender_lock() {
        assert_eq!(super::APPENDER_LOCK, 4_675_404);
        assert!(super::BEGIN_APPENDER.ends_with(&format!("({})", super::APPENDER_LOCK)));
    }
}
