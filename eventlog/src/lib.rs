//! The event log: the single source of truth of the gateway.
//!
//! Every write is a command checked by an aggregate; the events it produces are appended here,
//! in one `events` table, on PostgreSQL or SQLite. Projectors and the NATS relay tail the same
//! table by [`Cursor`]. This crate replaces the event repositories of postgres-es and
//! sqlite-es (the table keeps their columns) because the gateway needs what they do not give:
//! a global order that readers can tail without skipping, event ids, tenant ids,
//! multi-aggregate atomic appends and appends that share a caller's transaction.
//!
//! Code map, in layers (a module uses only those above it in this list):
//! - [`spans`]: whether spans are exported (traces), set once by the process.
//! - [`cursor`], [`json`], [`db`]: positions in the global order; JSON columns read back
//!   however deeply they nest; the connection pools of either backend, migrations, and write
//!   transactions.
//! - [`sql`]: the storage port: a [`Statement`] of SQL both dialects accept, run on the read
//!   pool or in a write transaction, answered with [`sql::Row`]s read the same way on both.
//! - [`store`]: [`store::Store`]: the `events` table: append, load one stream, tail after a
//!   cursor, inside a given transaction or in one of its own; with `recent`, the events this
//!   process committed last, which its readers take instead of decoding them again.
//! - [`idempotency`]: idempotency records, written in the same transaction as the events.
//! - [`aggregate`]: a stream folded into its cqrs-es aggregate; a command's outcome and errors.
//! - [`stream_cache`]: aggregates kept in memory, checked at commit.
//! - [`group_commit`]: what a commit is and its errors; the committer that commits many
//!   concurrent commands in one transaction.
//! - [`log`]: [`EventLog`]: the store with its committer and stream cache.
//! - [`transfer`]: the log and its idempotency records exported as JSON lines, and imported
//!   into another database of either backend.
//! - [`unit_of_work`]: commands on several aggregates, committed together.
//! - [`command`]: running one aggregate's command against the log, with optimistic
//!   concurrency and bounded retries.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod command;
pub mod cursor;
pub mod db;
pub mod group_commit;
pub mod idempotency;
pub mod json;
pub mod log;
mod recent;
pub mod spans;
pub mod sql;
pub mod store;
pub mod stream_cache;
pub mod transfer;
pub mod unit_of_work;

/// The hasher of the log's maps whose keys are bounded per command or group, or chosen by the
/// gateway (event ids, the streams and keys of one commit group, one command's streams):
/// faster than the standard one, whose resistance to crafted collisions only matters for maps
/// that grow with what clients send over time (the stream cache keeps it).
pub(crate) type FastHasher = foldhash::fast::RandomState;

pub use aggregate::{CommandError, CommandOutcome};
pub use cursor::Cursor;
pub use db::{Backend, Db, Tx};
pub use log::EventLog;
pub use sql::{Row, Statement};
pub use store::{
    AppendError, Appended, InlineProjection, NewEvent, RecordedEvent, StreamAppend, StreamId,
    StreamKey,
};
