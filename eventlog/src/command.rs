//! Running a command of a cqrs-es [`Aggregate`] against the log.
//!
//! The aggregate is rebuilt from its stream, decides, and its events are appended with the
//! version it decided against. When another writer got there first, the command is decided
//! again on the new state (it may now be refused, for example by an `If-Match` check), up to
//! [`MAX_ATTEMPTS`] times; then [`CommandError::Conflict`] reaches the caller.
//!
//! A stream of a cached type (see [`crate::stream_cache`]) is taken from the cache; the append
//! checks its version as it checks a read one. A refusal or a command that changes nothing,
//! decided on a cached stream, is decided again on a fresh read before it is reported.
//!
//! Within one process, commands on the same stream take turns (a striped lock keyed by the
//! stream), so a hot record does not burn its retries on conflicts between requests of the
//! same process; conflicts with other processes are still resolved optimistically.
//!
//! `CqrsFramework::execute` is not used: it commits one command per transaction through a
//! repository that cannot carry the gateway's columns, cursors or shared transactions.

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use domain::metadata::EventMetadata;

pub use crate::aggregate::{CommandError, CommandOutcome, Loaded, decide_new, fold};
use crate::idempotency::{IdempotencyKey, StoredResponse};
use crate::log::EventLog;
use crate::store::{AppendError, NewEvent, StreamAppend, StreamId};

/// How many times a command is decided before a concurrency conflict is reported.
pub const MAX_ATTEMPTS: usize = 5;

impl EventLog {
    /// Loads a stream (from the database, never from the cache) and folds its events into
    /// the aggregate.
    pub async fn load_aggregate<A: Aggregate + Clone + 'static>(
        &self,
        stream: &StreamId,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let history = self.load(stream, 0).await?;
        let loaded = fold(&history)?;
        self.remember(stream, &loaded);
        Ok(loaded)
    }

    /// Decides `command` on the stream's current state and appends the resulting events.
    pub async fn execute<A>(
        &self,
        stream: &StreamId,
        command: A::Command,
        services: &A::Services,
        metadata: &EventMetadata,
    ) -> Result<CommandOutcome<A>, CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
        A::Command: Clone,
    {
        self.execute_with(stream, command, services, metadata, None, |_| None)
            .await
            .map(|(outcome, _)| outcome)
    }

    /// [`EventLog::execute`], and, when `idempotency` is given, stores the response that
    /// `respond` makes of the outcome in the same transaction as the events (or in its own
    /// when the command recorded none). Returns the outcome and that response.
    pub async fn execute_with<A, R>(
        &self,
        stream: &StreamId,
        command: A::Command,
        services: &A::Services,
        metadata: &EventMetadata,
        idempotency: Option<&IdempotencyKey>,
        respond: R,
    ) -> Result<(CommandOutcome<A>, Option<StoredResponse>), CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
        A::Command: Clone,
        R: Fn(&CommandOutcome<A>) -> Option<StoredResponse>,
    {
        let _turn = self.stream_lock(stream).lock().await;
        let mut attempt = 0;
        let mut use_cache = true;
        loop {
            attempt += 1;
            let cached = if use_cache {
                self.cached::<A>(stream)
            } else {
                None
            };
            let from_cache = cached.is_some();
            let loaded = match cached {
                Some(loaded) => loaded,
                None => self.load_aggregate::<A>(stream).await?,
            };
            let Loaded {
                mut aggregate,
                version,
                cursor,
                created_at,
                updated_at,
            } = loaded;
            let sink = EventSink::default();
            let handled = aggregate.handle(command.clone(), services, &sink).await;
            let decided = sink.collect().await;
            if from_cache && (handled.is_err() || decided.is_empty()) {
                // Only an append checks cached state: decide this one on a fresh read.
                self.forget(stream);
                use_cache = false;
                attempt -= 1;
                continue;
            }
            handled.map_err(CommandError::Rejected)?;
            if decided.is_empty() {
                let outcome = CommandOutcome {
                    aggregate,
                    version,
                    events: Vec::new(),
                    cursor,
                    created_at,
                    updated_at,
                };
                let response = respond(&outcome);
                if let (Some(key), Some(response)) = (idempotency, &response) {
                    self.complete_idempotency(key, response).await?;
                }
                return Ok((outcome, response));
            }
            let events = decided
                .iter()
                .map(NewEvent::from_domain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(AppendError::from)?;
            let append = StreamAppend {
                stream: stream.clone(),
                expected_version: version,
                events,
                metadata: metadata.clone(),
            };
            let mut tx = self.db().begin().await?;
            let appended = match self.append_in(&mut tx, std::slice::from_ref(&append)).await {
                Ok(appended) => appended,
                Err(AppendError::Conflict { .. }) => {
                    tx.rollback().await?;
                    self.forget(stream);
                    use_cache = false;
                    if attempt >= MAX_ATTEMPTS {
                        return Err(CommandError::Conflict);
                    }
                    tracing::debug!(
                        aggregate_id = %stream.aggregate_id,
                        attempt,
                        "concurrent append by another process; deciding the command again"
                    );
                    // Spread the retries of racing processes apart.
                    let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u8 % 8);
                    tokio::time::sleep(std::time::Duration::from_millis(
                        (attempt as u64) * 2 + jitter,
                    ))
                    .await;
                    continue;
                }
                Err(error) => {
                    tx.rollback().await?;
                    return Err(error.into());
                }
            };
            let cursor = appended.last_cursor();
            let recorded_at = appended.events.last().map(|e| e.recorded_at);
            let outcome = CommandOutcome {
                aggregate,
                version: version + appended.events.len() as u64,
                cursor,
                created_at: created_at.or(recorded_at),
                updated_at: recorded_at,
                events: appended.events,
            };
            let response = respond(&outcome);
            if let (Some(key), Some(response)) = (idempotency, &response) {
                self.complete_idempotency_in(&mut tx, key, response).await?;
            }
            self.commit_appended(tx, &outcome.events).await?;
            self.remember(
                stream,
                &Loaded {
                    aggregate: outcome.aggregate.clone(),
                    version: outcome.version,
                    cursor: outcome.cursor,
                    created_at: outcome.created_at,
                    updated_at: outcome.updated_at,
                },
            );
            return Ok((outcome, response));
        }
    }
}
