//! Deletes idempotency records past their retention.

use std::time::Duration;

use eventlog::EventLog;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every `interval`, deletes the records older than `retention`, until `shutdown`.
pub fn spawn(
    log: EventLog,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(1));
            match log.prune_idempotency(cutoff).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "pruned idempotency records"),
                Err(error) => tracing::warn!(%error, "pruning idempotency records failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}
