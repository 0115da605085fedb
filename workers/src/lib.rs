//! The gateway's long-running loops.
//!
//! - [`runner`]: runs the projectors: lock, read the next batch after their checkpoints,
//!   apply, move the checkpoints, commit (all live projectors in one transaction per batch,
//!   each in a savepoint, so one that fails does not hold the others back). Any number of processes may run the same projector; the lock
//!   lets one at a time apply a batch, and the checkpoint moving in the same transaction makes
//!   each event's effect exactly-once.
//! - [`listener`]: PostgreSQL `LISTEN` on the append channel, so runners wake as soon as any
//!   process appends. Runners also poll, so a lost notification only delays them.
//! - [`consumer`]: the downstream consumer pattern (`gateway subscribe`): a durable JetStream
//!   pull consumer that applies each event exactly once in effect.
//! - [`reaper`]: deletes idempotency records past their retention.
//! - [`relay`]: publishes every event to NATS JetStream, in log order, exactly once within
//!   the stream's duplicate window.
//! - [`rebuild`]: replays a projector from the start of the log into shadow tables and swaps
//!   them in.
//!
//! Every loop stops at the next batch boundary when its `CancellationToken` is cancelled.
#![forbid(unsafe_code)]

pub mod catalogue;
pub mod consumer;
pub mod indexer;
pub mod listener;
pub mod reaper;
pub mod rebuild;
pub mod relay;
pub mod runner;
pub mod trace;

use std::sync::Arc;

use eventlog::{Db, EventLog};
use projections::Projector;
use projections::progress::Progress;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use runner::RunnerSettings;

/// Starts one runner for all the projectors, and on PostgreSQL the `LISTEN` wake-up task.
pub fn start(
    log: &EventLog,
    projectors: &[Arc<dyn Projector>],
    progress: &Progress,
    settings: &RunnerSettings,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut handles = vec![runner::spawn_group(
        log.clone(),
        projectors.to_vec(),
        progress.clone(),
        settings.clone(),
        shutdown.clone(),
    )];
    if let Db::Postgres(pool) = log.db() {
        handles.push(listener::spawn(pool.clone(), log.clone(), shutdown.clone()));
    }
    handles
}
