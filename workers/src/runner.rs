//! Running a projector: one batch at a time, each in its own transaction.

use std::sync::Arc;
use std::time::Duration;

use eventlog::{Cursor, EventLog, Tx};
use projections::progress::Progress;
use projections::{ProjectionError, Projector, Target, checkpoints};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a runner batches and waits.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// How long an idle runner waits before looking at the log again without a wake-up.
    pub poll_interval: Duration,
    /// How long a woken runner waits for more appends before reading, so that a burst of
    /// commands is applied as one batch instead of one transaction per command.
    pub coalesce: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            coalesce: Duration::from_millis(5),
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Applied `events` events; the checkpoint is now `cursor`.
    Applied { events: usize, cursor: Cursor },
    /// Nothing new to read.
    Idle,
    /// Another process holds this projector's lock.
    Busy,
}

/// The advisory-lock key of a checkpoint (PostgreSQL).
pub fn lock_key(checkpoint: &str) -> String {
    format!("projector:{checkpoint}")
}

/// Takes the checkpoint's lock inside `tx` (PostgreSQL; SQLite write transactions are
/// exclusive already). Returns false when another transaction holds it and `wait` is false.
pub(crate) async fn lock(tx: &mut Tx, checkpoint: &str, wait: bool) -> Result<bool, sqlx::Error> {
    let Tx::Postgres(conn) = tx else {
        return Ok(true);
    };
    // Transaction-scoped advisory locks end with the transaction, so a crashed runner never
    // leaves one behind, and taking one assigns no transaction id: the reader's own
    // transaction cannot hold back its view of the log.
    if wait {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(lock_key(checkpoint))
            .execute(&mut **conn)
            .await?;
        Ok(true)
    } else {
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(lock_key(checkpoint))
            .fetch_one(&mut **conn)
            .await
    }
}

/// Applies the next batch of at most `batch_size` events after checkpoint `checkpoint`, and
/// moves the checkpoint, in one transaction.
pub async fn run_batch(
    log: &EventLog,
    projector: &dyn Projector,
    target: Target,
    checkpoint: &str,
    batch_size: usize,
) -> Result<BatchOutcome, ProjectionError> {
    let mut tx = log.db().begin().await?;
    if !lock(&mut tx, checkpoint, false).await? {
        tx.rollback().await?;
        return Ok(BatchOutcome::Busy);
    }
    let after = checkpoints::read_in(&mut tx, checkpoint)
        .await?
        .unwrap_or(Cursor::START);
    let events = log.read_after_in(&mut tx, after, batch_size).await?;
    let Some(last) = events.last() else {
        tx.rollback().await?;
        return Ok(BatchOutcome::Idle);
    };
    let cursor = last.cursor;
    let applied = match projector.apply(&mut tx, target, &events).await {
        Ok(()) => checkpoints::write_in(&mut tx, checkpoint, cursor)
            .await
            .map_err(ProjectionError::from),
        Err(error) => Err(error),
    };
    if let Err(error) = applied {
        // Roll back now, not when the connection is next used: until then the transaction
        // would keep the projector's lock and block the retry.
        let _ = tx.rollback().await;
        return Err(error);
    }
    tx.commit().await?;
    Ok(BatchOutcome::Applied {
        events: events.len(),
        cursor,
    })
}

/// Runs `projector` until `shutdown`, finishing the batch in hand.
pub fn spawn(
    log: EventLog,
    projector: Arc<dyn Projector>,
    progress: Progress,
    settings: RunnerSettings,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let name = projector.name();
        let mut appended = log.subscribe();
        let mut failures: u32 = 0;
        if let Err(error) = checkpoints::ensure(log.db(), name).await {
            tracing::error!(projector = name, %error, "could not create the checkpoint");
        }
        while !shutdown.is_cancelled() {
            appended.mark_unchanged();
            let outcome = run_batch(
                &log,
                projector.as_ref(),
                Target::Live,
                name,
                settings.batch_size,
            )
            .await;
            let delay = match outcome {
                Ok(BatchOutcome::Applied { events, cursor }) => {
                    failures = 0;
                    progress.advance(name, cursor);
                    tracing::debug!(projector = name, events, "applied batch");
                    if events == settings.batch_size {
                        continue;
                    }
                    settings.poll_interval
                }
                Ok(BatchOutcome::Idle | BatchOutcome::Busy) => {
                    failures = 0;
                    settings.poll_interval
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tracing::error!(projector = name, %error, ?backoff, "batch failed; retrying");
                    backoff
                }
            };
            tokio::select! {
                _ = appended.changed(), if failures == 0 => {
                    if !settings.coalesce.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(settings.coalesce) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
                }
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        tracing::debug!(projector = name, "runner stopped");
    })
}
