//! The event log: the single source of truth of the gateway.
//!
//! Every write is a command checked by an aggregate; the events it produces are appended here,
//! in one `events` table, on PostgreSQL or SQLite. Projectors and the NATS relay tail the same
//! table by [`Cursor`]. This crate replaces the event repositories of postgres-es and
//! sqlite-es (the table keeps their columns) because the gateway needs what they do not give:
//! a global order that readers can tail without skipping, event ids, tenant ids,
//! multi-aggregate atomic appends and appends that share a caller's transaction.
//!
//! Code map:
//! - [`db`]: the connection pools of either backend, migrations, and write transactions.
//! - [`cursor`]: the position of an event in the global order, and its opaque string form.
//! - [`store`]: [`EventLog`]: append, load one stream, tail after a cursor.
//! - [`command`]: running a cqrs-es aggregate's command against the log, with optimistic
//!   concurrency and bounded retries.
//! - [`json`]: JSON columns read back however deeply they nest.
//! - [`idempotency`]: idempotency records, completed in the same transaction as the events.
//! - [`unit_of_work`]: commands on several aggregates, committed in one transaction.
//! - [`group_commit`]: the commits of many concurrent commands in one transaction.
//! - [`stream_cache`]: streams that rarely change, kept in memory and checked at commit.
#![forbid(unsafe_code)]

pub mod command;
pub mod cursor;
pub mod db;
pub mod group_commit;
pub mod idempotency;
pub mod json;
pub mod store;
pub mod stream_cache;
pub mod unit_of_work;

pub use command::{CommandError, CommandOutcome};
pub use cursor::Cursor;
pub use db::{Backend, Db, Tx};
pub use store::{
    AppendError, Appended, EventLog, InlineProjection, NewEvent, RecordedEvent, StreamAppend,
    StreamId,
};
