//! Running projectors: one batch at a time, each in its own transaction. The live projectors
//! of a process share one reader and one transaction per batch ([`spawn_group`]); the command
//! line runs one projector ([`run_batch`]).

use std::sync::Arc;
use std::time::Duration;

use eventlog::{Cursor, EventLog, Statement, Tx};
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
    // Closed when this function returns: each traced command's span of this projector.
    let _traced = crate::trace::project_spans(&events, projector.name());
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

/// Applies the one event after the checkpoint of `projector` in a transaction of its own: how
/// a runner finds the event a failing batch stumbles on. `Ok(Some(cursor))` when it was
/// applied, `Ok(None)` when there was nothing to apply (or another process holds the lock),
/// and on failure the event's id with the error.
pub async fn apply_one(
    log: &EventLog,
    projector: &dyn Projector,
) -> Result<Option<Cursor>, (Option<uuid::Uuid>, ProjectionError)> {
    let fail = |error: ProjectionError| (None, error);
    let mut tx = log.db().begin().await.map_err(|e| fail(e.into()))?;
    if !lock(&mut tx, projector.name(), false)
        .await
        .map_err(|e| fail(e.into()))?
    {
        let _ = tx.rollback().await;
        return Ok(None);
    }
    let after = checkpoints::read_in(&mut tx, projector.name())
        .await
        .map_err(|e| fail(e.into()))?
        .unwrap_or(Cursor::START);
    let events = log
        .read_after_in(&mut tx, after, 1)
        .await
        .map_err(|e| fail(e.into()))?;
    let Some(event) = events.first() else {
        let _ = tx.rollback().await;
        return Ok(None);
    };
    let applied = match projector.apply(&mut tx, Target::Live, &events).await {
        Ok(()) => checkpoints::write_in(&mut tx, projector.name(), event.cursor)
            .await
            .map_err(ProjectionError::from),
        Err(error) => Err(error),
    };
    if let Err(error) = applied {
        let _ = tx.rollback().await;
        return Err((Some(event.event_id), error));
    }
    tx.commit().await.map_err(|e| fail(e.into()))?;
    Ok(Some(event.cursor))
}

/// After a failed batch of `projector`, applies its events one at a time, at most `limit`, to
/// find the one it fails on; reports the failure (with that event's id) to `progress`, or
/// clears it when every event went through (the batch's failure passed).
async fn narrow_down(
    log: &EventLog,
    projector: &dyn Projector,
    progress: &Progress,
    limit: usize,
    batch_error: ProjectionError,
) {
    for _ in 0..limit {
        match apply_one(log, projector).await {
            Ok(Some(cursor)) => progress.advance(projector.name(), cursor),
            Ok(None) => break,
            Err((event_id, error)) => {
                tracing::error!(projector = projector.name(), event_id = ?event_id, %error, "projector fails on an event; retrying");
                progress.fail(projector.name(), event_id, error.to_string());
                return;
            }
        }
    }
    tracing::warn!(projector = projector.name(), error = %batch_error, "a failed batch went through one event at a time");
    progress.recovered(projector.name());
}

/// What one group batch did, per projector.
#[derive(Debug, Default)]
pub struct GroupOutcome {
    /// Projectors whose checkpoint moved: name, new checkpoint, events they were given.
    pub applied: Vec<(&'static str, Cursor, usize)>,
    /// Projectors whose batch failed (their effects and checkpoint were rolled back).
    pub failed: Vec<(&'static str, ProjectionError)>,
    /// Events read from the log.
    pub read: usize,
}

/// Takes the lock of each of `names` that no other transaction holds, inside `tx`, in one
/// round trip; returns the ones taken.
async fn lock_free(tx: &mut Tx, names: &[&'static str]) -> Result<Vec<&'static str>, sqlx::Error> {
    let Tx::Postgres(conn) = tx else {
        return Ok(names.to_vec());
    };
    let keys: Vec<String> = names.iter().map(|name| lock_key(name)).collect();
    let taken: Vec<String> = sqlx::query_scalar(
        "SELECT key FROM unnest($1::text[]) AS key \
         WHERE pg_try_advisory_xact_lock(hashtextextended(key, 0))",
    )
    .bind(&keys)
    .fetch_all(&mut **conn)
    .await?;
    Ok(names
        .iter()
        .zip(&keys)
        .filter(|(_, key)| taken.contains(key))
        .map(|(name, _)| *name)
        .collect())
}

async fn execute(tx: &mut Tx, sql: &'static str) -> Result<(), sqlx::Error> {
    tx.execute(Statement::new(sql)).await?;
    Ok(())
}

/// Applies the next batch of the log to every projector of `projectors` in one transaction:
/// the log is read once (from the earliest of their checkpoints, at most `batch_size`
/// events), each projector gets the events past its own checkpoint, and every checkpoint
/// that moved is written, with one commit for all. Projectors whose lock another process
/// holds are skipped.
///
/// The batch is first applied with every projector straight in the transaction. When one
/// fails, all of it is rolled back and the batch is applied again with each projector inside
/// a savepoint: one that fails then is rolled back alone and reported in
/// [`GroupOutcome::failed`], the others commit. Failures are rare, so the common batch pays
/// no savepoint statements (two round trips per projector).
pub async fn run_group(
    log: &EventLog,
    projectors: &[Arc<dyn Projector>],
    batch_size: usize,
) -> Result<GroupOutcome, ProjectionError> {
    match run_group_as(log, projectors, batch_size, Isolation::Together).await? {
        Some(outcome) => Ok(outcome),
        None => Ok(
            run_group_as(log, projectors, batch_size, Isolation::Savepoints)
                .await?
                .unwrap_or_default(),
        ),
    }
}

/// How [`run_group_as`] keeps one projector's failure from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// Not at all: the first failure rolls the whole batch back.
    Together,
    /// A savepoint around each projector.
    Savepoints,
}

/// [`run_group`] with the given isolation; `None` when, applied [`Isolation::Together`], a
/// projector failed and nothing was committed.
async fn run_group_as(
    log: &EventLog,
    projectors: &[Arc<dyn Projector>],
    batch_size: usize,
    isolation: Isolation,
) -> Result<Option<GroupOutcome>, ProjectionError> {
    let mut outcome = GroupOutcome::default();
    if projectors.is_empty() {
        return Ok(Some(outcome));
    }
    let mut tx = log.db().begin().await?;
    let names: Vec<&'static str> = projectors.iter().map(|p| p.name()).collect();
    let locked = lock_free(&mut tx, &names).await?;
    let positions = checkpoints::read_many_in(&mut tx, &locked).await?;
    let checkpoint_of = |name: &str| positions.get(name).copied().unwrap_or(Cursor::START);
    let Some(from) = locked.iter().map(|name| checkpoint_of(name)).min() else {
        tx.rollback().await?;
        return Ok(Some(outcome));
    };
    let events = log.read_after_in(&mut tx, from, batch_size).await?;
    outcome.read = events.len();
    if events.is_empty() {
        tx.rollback().await?;
        return Ok(Some(outcome));
    }
    let isolated = isolation == Isolation::Savepoints;
    // Closed when this function returns: each traced command's span of each projector.
    let mut traced = Vec::new();
    for projector in projectors.iter().filter(|p| locked.contains(&p.name())) {
        let after = checkpoint_of(projector.name());
        let start = events.partition_point(|event| event.cursor <= after);
        let Some(last) = events.last().filter(|_| start < events.len()) else {
            continue;
        };
        let types = projector.aggregate_types();
        if !events[start..]
            .iter()
            .any(|event| types.contains(&event.aggregate_type.as_str()))
        {
            // Nothing for it: only its checkpoint moves.
            outcome.applied.push((projector.name(), last.cursor, 0));
            continue;
        }
        traced.extend(crate::trace::project_spans(
            &events[start..],
            projector.name(),
        ));
        if isolated {
            execute(&mut tx, "SAVEPOINT projector").await?;
        }
        match projector
            .apply(&mut tx, Target::Live, &events[start..])
            .await
        {
            Ok(()) => {
                if isolated {
                    execute(&mut tx, "RELEASE SAVEPOINT projector").await?;
                }
                outcome
                    .applied
                    .push((projector.name(), last.cursor, events.len() - start));
            }
            Err(_) if !isolated => {
                // Applied again, each projector in a savepoint, to tell which one fails.
                tx.rollback().await?;
                return Ok(None);
            }
            Err(error) => {
                execute(&mut tx, "ROLLBACK TO SAVEPOINT projector").await?;
                outcome.failed.push((projector.name(), error));
            }
        }
    }
    let moved: Vec<(&str, Cursor)> = outcome
        .applied
        .iter()
        .map(|(name, cursor, _)| (*name, *cursor))
        .collect();
    checkpoints::write_many_in(&mut tx, &moved).await?;
    tx.commit().await?;
    drop(traced);
    Ok(Some(outcome))
}

/// Runs every projector of `projectors` until `shutdown` from one task, one
/// [`run_group`] transaction per batch, finishing the batch in hand. A projector whose batch
/// fails is left out, with a growing back-off, until its retry is due; the others go on.
pub fn spawn_group(
    log: EventLog,
    projectors: Vec<Arc<dyn Projector>>,
    progress: Progress,
    settings: RunnerSettings,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut appended = log.subscribe();
        // Failures in a row and the time of the next try, per failing projector.
        let mut backoff: std::collections::HashMap<&'static str, (u32, tokio::time::Instant)> =
            std::collections::HashMap::new();
        let mut group_failures: u32 = 0;
        for projector in &projectors {
            if let Err(error) = checkpoints::ensure(log.db(), projector.name()).await {
                tracing::error!(projector = projector.name(), %error, "could not create the checkpoint");
            }
        }
        while !shutdown.is_cancelled() {
            appended.mark_unchanged();
            let now = tokio::time::Instant::now();
            let due: Vec<Arc<dyn Projector>> = projectors
                .iter()
                .filter(|p| backoff.get(p.name()).is_none_or(|(_, at)| *at <= now))
                .cloned()
                .collect();
            let mut delay = settings.poll_interval;
            match run_group(&log, &due, settings.batch_size).await {
                Ok(outcome) => {
                    group_failures = 0;
                    for (name, cursor, events) in &outcome.applied {
                        backoff.remove(name);
                        progress.advance(name, *cursor);
                        progress.recovered(name);
                        tracing::debug!(projector = name, events, "applied batch");
                    }
                    for (name, error) in outcome.failed {
                        let failures = backoff.get(name).map_or(1, |(n, _)| n.saturating_add(1));
                        let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                        tracing::error!(projector = name, %error, backoff = ?wait, "batch failed; retrying");
                        backoff.insert(name, (failures, tokio::time::Instant::now() + wait));
                        if let Some(projector) = projectors.iter().find(|p| p.name() == name) {
                            narrow_down(
                                &log,
                                projector.as_ref(),
                                &progress,
                                settings.batch_size,
                                error,
                            )
                            .await;
                        }
                    }
                    if outcome.read == settings.batch_size {
                        continue;
                    }
                }
                Err(error) => {
                    group_failures = group_failures.saturating_add(1);
                    delay = Duration::from_millis(100 * 2u64.pow(group_failures.min(6)));
                    tracing::error!(%error, backoff = ?delay, "projector batch failed; retrying");
                }
            }
            if let Some(next) = backoff.values().map(|(_, at)| *at).min() {
                delay = delay.min(next.saturating_duration_since(tokio::time::Instant::now()));
            }
            tokio::select! {
                _ = appended.changed(), if group_failures == 0 => {
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
        tracing::debug!("projector group stopped");
    })
}
