//! The storage port: one statement, run on either backend.
//!
//! A [`Statement`] is SQL that both dialects accept and the values bound to it; [`Db`] runs it
//! on the read pool and [`Tx`] inside a write transaction, and both answer with [`Row`]s that
//! read columns the same way whatever the engine. A value can be bound when both drivers
//! encode its type and it is one of [`Value`]'s; a row can be decoded into any `sqlx::FromRow` type that both
//! drivers can build (`#[derive(FromRow)]` structs and tuples). Code that needs SQL of one
//! dialect asks the connection's [`Backend`](crate::Backend) and builds the statement with it,
//! in the module that owns the concern.

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, ColumnIndex, Decode, Encode, FromRow, Postgres, Sqlite, Type};

use std::borrow::Cow;
use std::sync::OnceLock;

use crate::Backend;
use crate::db::{Db, Tx};

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;
type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// A value both drivers can bind: the scalars statements bind (and their `Option`s, for
/// `NULL`) are kept inline in the statement, without an allocation each; JSON documents are
/// bound through a box. Another type needs a line in `inline_values!`.
pub trait Value<'q>: Send + 'q {
    fn into_bound(self) -> Bound<'q>;
}

/// A bound value.
pub enum Bound<'q> {
    Str(Option<&'q str>),
    String(Option<String>),
    I64(Option<i64>),
    I32(Option<i32>),
    F64(Option<f64>),
    Bool(Option<bool>),
    Uuid(Option<uuid::Uuid>),
    Time(Option<chrono::DateTime<chrono::Utc>>),
    Bytes(Option<&'q [u8]>),
    /// Arrays, for statements written for PostgreSQL alone (`unnest($1::text[], …)`);
    /// SQLite has no arrays, and a statement binding one fails there.
    Texts(Vec<&'q str>),
    I64s(Vec<i64>),
    Times(Vec<chrono::DateTime<chrono::Utc>>),
    Other(Box<dyn DynValue<'q>>),
}

macro_rules! array_values {
    ($($variant:ident: $type:ty),* $(,)?) => {$(
        impl<'q> Value<'q> for $type {
            fn into_bound(self) -> Bound<'q> {
                Bound::$variant(self)
            }
        }
    )*};
}

array_values!(
    Texts: Vec<&'q str>,
    I64s: Vec<i64>,
    Times: Vec<chrono::DateTime<chrono::Utc>>,
);

macro_rules! inline_values {
    ($($variant:ident: $type:ty),* $(,)?) => {$(
        impl<'q> Value<'q> for $type {
            fn into_bound(self) -> Bound<'q> {
                Bound::$variant(Some(self))
            }
        }
        impl<'q> Value<'q> for Option<$type> {
            fn into_bound(self) -> Bound<'q> {
                Bound::$variant(self)
            }
        }
    )*};
}

inline_values!(
    Str: &'q str,
    String: String,
    I64: i64,
    I32: i32,
    F64: f64,
    Bool: bool,
    Uuid: uuid::Uuid,
    Time: chrono::DateTime<chrono::Utc>,
    Bytes: &'q [u8],
);

impl<'q, T> Value<'q> for sqlx::types::Json<T>
where
    T: serde::Serialize + Send + Sync + 'q,
{
    fn into_bound(self) -> Bound<'q> {
        Bound::Other(Box::new(self))
    }
}

impl<'q, T> Value<'q> for Option<sqlx::types::Json<T>>
where
    T: serde::Serialize + Send + Sync + 'q,
{
    fn into_bound(self) -> Bound<'q> {
        Bound::Other(Box::new(self))
    }
}

/// A JSON document (or another value both drivers encode), bound through a box.
pub trait DynValue<'q>: Send + 'q {
    fn add_postgres(self: Box<Self>, arguments: &mut PgArguments) -> Result<(), BoxDynError>;
    fn add_sqlite(self: Box<Self>, arguments: &mut SqliteArguments<'q>) -> Result<(), BoxDynError>;
}

impl<'q, T> DynValue<'q> for T
where
    T: Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Type<Sqlite> + Send + 'q,
{
    fn add_postgres(self: Box<Self>, arguments: &mut PgArguments) -> Result<(), BoxDynError> {
        arguments.add(*self)
    }

    fn add_sqlite(self: Box<Self>, arguments: &mut SqliteArguments<'q>) -> Result<(), BoxDynError> {
        arguments.add(*self)
    }
}

impl<'q> Bound<'q> {
    fn add_postgres(self, arguments: &mut PgArguments) -> Result<(), BoxDynError> {
        match self {
            Bound::Str(v) => arguments.add(v),
            Bound::String(v) => arguments.add(v),
            Bound::I64(v) => arguments.add(v),
            Bound::I32(v) => arguments.add(v),
            Bound::F64(v) => arguments.add(v),
            Bound::Bool(v) => arguments.add(v),
            Bound::Uuid(v) => arguments.add(v),
            Bound::Time(v) => arguments.add(v),
            Bound::Bytes(v) => arguments.add(v),
            Bound::Texts(v) => arguments.add(v),
            Bound::I64s(v) => arguments.add(v),
            Bound::Times(v) => arguments.add(v),
            Bound::Other(v) => v.add_postgres(arguments),
        }
    }

    fn add_sqlite(self, arguments: &mut SqliteArguments<'q>) -> Result<(), BoxDynError> {
        match self {
            Bound::Str(v) => arguments.add(v),
            Bound::String(v) => arguments.add(v),
            Bound::I64(v) => arguments.add(v),
            Bound::I32(v) => arguments.add(v),
            Bound::F64(v) => arguments.add(v),
            Bound::Bool(v) => arguments.add(v),
            Bound::Uuid(v) => arguments.add(v),
            Bound::Time(v) => arguments.add(v),
            Bound::Bytes(v) => arguments.add(v),
            Bound::Texts(_) | Bound::I64s(_) | Bound::Times(_) => {
                Err("an array is bound on PostgreSQL only".into())
            }
            Bound::Other(v) => v.add_sqlite(arguments),
        }
    }
}

/// Row counts up to this one recur (a group commit's or a projector batch's few rows).
pub const RECURRING_ROWS: usize = 16;

/// Whether a statement of `rows` rows, whose text changes with the row count, is worth keeping
/// prepared: a small count recurs all the time (each kept statement then skips the server's
/// parse and plan and the driver's describe), as does the full chunk of `chunk` rows; other
/// counts are rare, and each kept one would take a slot of the connection's statement cache.
pub fn recurs(rows: usize, chunk: usize) -> bool {
    rows <= RECURRING_ROWS || rows == chunk
}

/// The texts of one statement whose text changes with the row count (a multi-row `VALUES`
/// list), built once per backend for each count that [`recurs`] and kept for the process:
/// building one costs thousands of instructions, and a group commit runs several.
pub struct Texts {
    chunk: usize,
    /// Per backend: 0..=[`RECURRING_ROWS`] rows, then the full chunk.
    kept: [[OnceLock<String>; RECURRING_ROWS + 2]; 2],
}

impl Texts {
    /// For statements of up to `chunk` rows.
    pub const fn new(chunk: usize) -> Self {
        Self {
            chunk,
            kept: [const { [const { OnceLock::new() }; RECURRING_ROWS + 2] }; 2],
        }
    }

    /// The text for `rows` rows on `backend`: `build`'s, kept when the count recurs.
    pub fn get(
        &'static self,
        backend: Backend,
        rows: usize,
        build: impl FnOnce() -> String,
    ) -> Cow<'static, str> {
        let slot = if rows <= RECURRING_ROWS {
            rows
        } else if rows == self.chunk {
            RECURRING_ROWS + 1
        } else {
            return Cow::Owned(build());
        };
        let backend = match backend {
            Backend::Postgres => 0,
            Backend::Sqlite => 1,
        };
        Cow::Borrowed(self.kept[backend][slot].get_or_init(build))
    }

    /// Whether a statement of `rows` rows is worth keeping prepared ([`recurs`]).
    pub fn recurs(&self, rows: usize) -> bool {
        recurs(rows, self.chunk)
    }
}

/// SQL and its bound values, for either backend.
pub struct Statement<'q> {
    sql: &'q str,
    values: Vec<Bound<'q>>,
    persistent: bool,
}

impl<'q> Statement<'q> {
    pub fn new(sql: &'q str) -> Self {
        Self {
            sql,
            values: Vec::new(),
            persistent: true,
        }
    }

    /// Binds the next placeholder (`$n`, or `?` in a list built by
    /// [`Backend::values`](crate::Backend::values)).
    pub fn bind(mut self, value: impl Value<'q>) -> Self {
        self.values.push(value.into_bound());
        self
    }

    /// Binds the next placeholder in place, for statements built in a loop.
    pub fn push(&mut self, value: impl Value<'q>) {
        self.values.push(value.into_bound());
    }

    /// Whether the driver keeps the prepared statement for reuse (the default). Statements of
    /// varying text (row counts, cursors that need a fresh plan) should not, except for the
    /// row counts that recur (see [`recurs`]).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    // The values go straight into the driver's argument buffer: an encoding error (more
    // values than the protocol allows, …) is the statement's error when it runs.
    fn postgres(self) -> Result<PgQuery<'q>, sqlx::Error> {
        let mut arguments = PgArguments::default();
        arguments.reserve(self.values.len(), self.values.len() * 16);
        for value in self.values {
            value
                .add_postgres(&mut arguments)
                .map_err(sqlx::Error::Encode)?;
        }
        Ok(sqlx::query_with(self.sql, arguments).persistent(self.persistent))
    }

    fn sqlite(self) -> Result<SqliteQuery<'q>, sqlx::Error> {
        let mut arguments = SqliteArguments::default();
        arguments.reserve(self.values.len(), 0);
        for value in self.values {
            value
                .add_sqlite(&mut arguments)
                .map_err(sqlx::Error::Encode)?;
        }
        Ok(sqlx::query_with(self.sql, arguments).persistent(self.persistent))
    }
}

/// A column type both drivers decode.
pub trait Column<'r>:
    Decode<'r, Postgres> + Type<Postgres> + Decode<'r, Sqlite> + Type<Sqlite>
{
}

impl<'r, T> Column<'r> for T where
    T: Decode<'r, Postgres> + Type<Postgres> + Decode<'r, Sqlite> + Type<Sqlite>
{
}

/// A column's name or position, on either backend.
pub trait Index: ColumnIndex<PgRow> + ColumnIndex<SqliteRow> {}

impl<I> Index for I where I: ColumnIndex<PgRow> + ColumnIndex<SqliteRow> {}

/// A type both drivers can build from a row.
pub trait Record: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> {}

impl<T> Record for T where T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> {}

/// A row of either backend.
pub enum Row {
    Postgres(PgRow),
    Sqlite(SqliteRow),
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use sqlx::Row as _;
        let columns = match self {
            Row::Postgres(row) => row.len(),
            Row::Sqlite(row) => row.len(),
        };
        f.debug_struct("Row").field("columns", &columns).finish()
    }
}

impl Row {
    /// The column `index` (a name or a position) as `T`.
    pub fn try_get<'r, T: Column<'r>, I: Index>(&'r self, index: I) -> Result<T, sqlx::Error> {
        use sqlx::Row as _;
        match self {
            Row::Postgres(row) => row.try_get(index),
            Row::Sqlite(row) => row.try_get(index),
        }
    }

    /// The row as `T`.
    pub fn decode<T: Record>(&self) -> Result<T, sqlx::Error> {
        match self {
            Row::Postgres(row) => T::from_row(row),
            Row::Sqlite(row) => T::from_row(row),
        }
    }
}

/// Decodes every row as `T`.
fn decode_all<R, T>(rows: &[R]) -> Result<Vec<T>, sqlx::Error>
where
    R: sqlx::Row,
    T: for<'r> FromRow<'r, R>,
{
    rows.iter().map(T::from_row).collect()
}

impl Db {
    /// Runs `statement` on the read pool.
    pub async fn fetch_all(&self, statement: Statement<'_>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => {
                let rows = statement.postgres()?.fetch_all(pool).await?;
                rows.into_iter().map(Row::Postgres).collect()
            }
            Db::Sqlite(pools) => {
                let rows = statement.sqlite()?.fetch_all(&pools.reader).await?;
                rows.into_iter().map(Row::Sqlite).collect()
            }
        })
    }

    /// [`Db::fetch_all`], each row decoded as `T` (straight from the driver's rows).
    pub async fn fetch_all_as<T: Record>(
        &self,
        statement: Statement<'_>,
    ) -> Result<Vec<T>, sqlx::Error> {
        match self {
            Db::Postgres(pool) => decode_all(&statement.postgres()?.fetch_all(pool).await?),
            Db::Sqlite(pools) => decode_all(&statement.sqlite()?.fetch_all(&pools.reader).await?),
        }
    }

    /// Runs `statement` on the read pool; its first row, if any.
    pub async fn fetch_optional(
        &self,
        statement: Statement<'_>,
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => statement
                .postgres()?
                .fetch_optional(pool)
                .await?
                .map(Row::Postgres),
            Db::Sqlite(pools) => statement
                .sqlite()?
                .fetch_optional(&pools.reader)
                .await?
                .map(Row::Sqlite),
        })
    }

    /// [`Db::fetch_optional`] decoded as `T`.
    pub async fn fetch_optional_as<T: Record>(
        &self,
        statement: Statement<'_>,
    ) -> Result<Option<T>, sqlx::Error> {
        self.fetch_optional(statement)
            .await?
            .map(|row| row.decode())
            .transpose()
    }

    /// Runs `statement` as a transaction of its own on the write connection; the number of
    /// rows it changed. For single statements that append no events.
    pub async fn execute(&self, statement: Statement<'_>) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => statement.postgres()?.execute(pool).await?.rows_affected(),
            Db::Sqlite(pools) => statement
                .sqlite()?
                .execute(&pools.writer)
                .await?
                .rows_affected(),
        })
    }

    /// Runs `statement` on the read pool; its one row (an error when there is none).
    pub async fn fetch_one(&self, statement: Statement<'_>) -> Result<Row, sqlx::Error> {
        self.fetch_optional(statement)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }
}

impl Tx {
    /// Runs `statement` in the transaction; the number of rows it changed.
    pub async fn execute(&mut self, statement: Statement<'_>) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Tx::Postgres(tx) => statement
                .postgres()?
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Tx::Sqlite(tx) => statement
                .sqlite()?
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Runs `statement` in the transaction; every row it returns.
    pub async fn fetch_all(&mut self, statement: Statement<'_>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Tx::Postgres(tx) => {
                let rows = statement.postgres()?.fetch_all(&mut **tx).await?;
                rows.into_iter().map(Row::Postgres).collect()
            }
            Tx::Sqlite(tx) => {
                let rows = statement.sqlite()?.fetch_all(&mut **tx).await?;
                rows.into_iter().map(Row::Sqlite).collect()
            }
        })
    }

    /// [`Tx::fetch_all`], each row decoded as `T` (straight from the driver's rows).
    pub async fn fetch_all_as<T: Record>(
        &mut self,
        statement: Statement<'_>,
    ) -> Result<Vec<T>, sqlx::Error> {
        match self {
            Tx::Postgres(tx) => decode_all(&statement.postgres()?.fetch_all(&mut **tx).await?),
            Tx::Sqlite(tx) => decode_all(&statement.sqlite()?.fetch_all(&mut **tx).await?),
        }
    }

    /// Runs `statement` in the transaction; its first row, if any.
    pub async fn fetch_optional(
        &mut self,
        statement: Statement<'_>,
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(match self {
            Tx::Postgres(tx) => statement
                .postgres()?
                .fetch_optional(&mut **tx)
                .await?
                .map(Row::Postgres),
            Tx::Sqlite(tx) => statement
                .sqlite()?
                .fetch_optional(&mut **tx)
                .await?
                .map(Row::Sqlite),
        })
    }

    /// [`Tx::fetch_optional`] decoded as `T`.
    pub async fn fetch_optional_as<T: Record>(
        &mut self,
        statement: Statement<'_>,
    ) -> Result<Option<T>, sqlx::Error> {
        self.fetch_optional(statement)
            .await?
            .map(|row| row.decode())
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{RECURRING_ROWS, Texts};
    use crate::Backend;

    #[test]
    fn texts_of_recurring_counts_are_built_once_per_backend() {
        static TEXTS: Texts = Texts::new(100);
        let built = std::cell::Cell::new(0);
        let text = |backend: Backend, rows: usize| {
            TEXTS.get(backend, rows, || {
                built.set(built.get() + 1);
                format!("{} {}", backend.as_str(), backend.values(rows, 2))
            })
        };
        for rows in [1, RECURRING_ROWS, 100] {
            let first = text(Backend::Postgres, rows);
            assert!(matches!(first, Cow::Borrowed(_)));
            assert_eq!(text(Backend::Postgres, rows), first);
            assert!(TEXTS.recurs(rows));
        }
        assert_eq!(built.get(), 3);
        // Each backend keeps its own text for the same count.
        assert_eq!(text(Backend::Sqlite, 1), "sqlite (?, ?)");
        assert_eq!(text(Backend::Postgres, 1), "postgres ($1, $2)");
        assert_eq!(built.get(), 4);
        // Other counts are built every time and not kept.
        let rare = text(Backend::Postgres, RECURRING_ROWS + 1);
        assert!(matches!(rare, Cow::Owned(_)));
        assert!(!TEXTS.recurs(RECURRING_ROWS + 1));
        text(Backend::Postgres, RECURRING_ROWS + 1);
        assert_eq!(built.get(), 6);
    }
}
