//! The NATS relay: publishes every event of the log, in log order, to a JetStream stream.
//!
//! Each batch: read the events after the relay's checkpoint, publish them (pipelined, at most
//! `max_in_flight` unacknowledged), wait for every acknowledgement, then move the checkpoint
//! with a compare-and-set in a short transaction. No database transaction stays open while
//! NATS is waited for, so a slow or absent NATS never holds up commands (on SQLite a write
//! transaction is the single writer's lock). So:
//! - nothing is checkpointed before JetStream has stored it: a crash re-publishes the window
//!   since the last checkpoint, and `Nats-Msg-Id` (the event id) makes JetStream drop those
//!   duplicates within the stream's duplicate window;
//! - one relay per PostgreSQL database publishes: the leader holds a session-level advisory
//!   lock on a connection of its own. When the leader dies its connection closes, the lock is
//!   released, and a standby process takes over within one poll interval. (Two relays that
//!   did race would publish the same windows in the same order; JetStream keeps the first copy
//!   of each event, so the stream would still hold every event once, in log order.)
//! - NATS down: commands still succeed (the log is the outbox); the relay retries with backoff
//!   and drains the backlog when NATS returns.
//!
//! Subjects: `<prefix>.<tenant>.<aggregateType>.<eventType>.<aggregateId>`, every token escaped
//! by [`escape_token`] so that user data never adds tokens or wildcards.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use eventlog::{Cursor, EventLog, RecordedEvent};
use projections::checkpoints;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::runner;

/// The relay's checkpoint (and lock) name.
pub const CHECKPOINT: &str = "relay";

/// How the relay connects and publishes.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub url: String,
    /// JetStream stream name, created or updated on start.
    pub stream: String,
    /// First subject token; the stream takes `<prefix>.>`.
    pub subject_prefix: String,
    pub max_age: Duration,
    pub duplicate_window: Duration,
    pub replicas: usize,
    pub batch_size: usize,
    /// Most publishes awaiting their acknowledgement.
    pub max_in_flight: usize,
    pub poll_interval: Duration,
}

/// What `/ready` and `/metrics` report about the relay.
#[derive(Debug, Default)]
pub struct RelayStatus {
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl RelayStatus {
    /// Whether the last attempt to publish (or to connect) succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .expect("status lock poisoned")
            .clone()
    }

    fn ok(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock poisoned") = None;
    }

    fn failed(&self, error: String) {
        self.healthy.store(false, Ordering::Relaxed);
        *self.last_error.lock().expect("status lock poisoned") = Some(error);
    }
}

/// Escapes one subject token: bytes other than ASCII letters, digits, `-` and `_` become
/// `%XX`, so a token never contains `.`, `*`, `>` or white space.
pub fn escape_token(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() { "%00".into() } else { out }
}

/// The subject prefix of events that only some roles may read (see
/// [`domain::visibility`]): `<prefix>_restricted`, outside `<prefix>.>`, so a subscriber to the
/// public subjects never receives them and one that needs them subscribes on purpose.
pub fn restricted_prefix(prefix: &str) -> String {
    format!("{prefix}_restricted")
}

/// The subject of an event: `<prefix>.<tenant>.<aggregateType>.<eventType>.<aggregateId>`, or
/// under [`restricted_prefix`] for events not every reader may see.
pub fn subject(prefix: &str, event: &RecordedEvent) -> String {
    let prefix = if event.visibility().is_public() {
        prefix.to_string()
    } else {
        restricted_prefix(prefix)
    };
    format!(
        "{prefix}.{}.{}.{}.{}",
        escape_token(&event.tenant_id),
        escape_token(&event.aggregate_type),
        escape_token(&event.event_type),
        escape_token(&event.aggregate_id),
    )
}

/// The headers of an event's message.
pub fn headers(event: &RecordedEvent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = event.event_id.to_string();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    headers.insert("Gateway-Event-Id", id.as_str());
    headers.insert("Gateway-Cursor", event.cursor.to_string().as_str());
    headers.insert("Gateway-Tenant", event.tenant_id.as_str());
    headers.insert("Gateway-Aggregate-Type", event.aggregate_type.as_str());
    headers.insert("Gateway-Aggregate-Id", event.aggregate_id.as_str());
    headers.insert("Gateway-Sequence", event.sequence.to_string().as_str());
    headers.insert("Gateway-Event-Type", event.event_type.as_str());
    headers.insert("Gateway-Event-Version", event.event_version.as_str());
    if let Some(request_id) = event.metadata["requestId"].as_str() {
        headers.insert("Gateway-Request-Id", request_id);
    }
    if let Some(traceparent) = event.metadata["traceparent"].as_str() {
        headers.insert("traceparent", traceparent);
    }
    headers
}

/// Creates the stream, or brings its settings up to date.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    settings: &RelaySettings,
) -> Result<(), async_nats::Error> {
    let config = stream::Config {
        name: settings.stream.clone(),
        subjects: vec![
            format!("{}.>", settings.subject_prefix),
            format!("{}.>", restricted_prefix(&settings.subject_prefix)),
        ],
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    match jetstream.get_stream(&settings.stream).await {
        Ok(_) => {
            jetstream.update_stream(config).await?;
        }
        Err(_) => {
            jetstream.create_stream(config).await?;
        }
    }
    Ok(())
}

/// What one relay batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    Published { events: usize, cursor: Cursor },
    Idle,
    Busy,
}

/// Publishes the next batch and moves the relay's checkpoint.
pub async fn run_batch(
    log: &EventLog,
    jetstream: &jetstream::Context,
    settings: &RelaySettings,
) -> Result<RelayOutcome, async_nats::Error> {
    let after = checkpoints::read(log.db(), CHECKPOINT)
        .await?
        .unwrap_or(Cursor::START);
    let events = log.read_after(after, settings.batch_size).await?;
    let Some(last) = events.last() else {
        return Ok(RelayOutcome::Idle);
    };
    let cursor = last.cursor;
    // Closed when this function returns: each traced command's span of the publish.
    let _traced = crate::trace::spans_for(
        &events,
        || tracing::info_span!("publish", otel.name = %format!("publish {}", settings.subject_prefix), otel.kind = "producer"),
    );
    for window in events.chunks(settings.max_in_flight.max(1)) {
        let mut acks = Vec::with_capacity(window.len());
        for event in window {
            let payload = serde_json::to_vec(&event.envelope())?;
            acks.push(
                jetstream
                    .publish_with_headers(
                        subject(&settings.subject_prefix, event),
                        headers(event),
                        payload.into(),
                    )
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
    }
    let mut tx = log.db().begin().await?;
    let moved = checkpoints::compare_and_set_in(&mut tx, CHECKPOINT, after, cursor).await?;
    tx.commit().await?;
    if !moved {
        // Another relay (or a replay) moved the checkpoint meanwhile; what was published again
        // was dropped as duplicates.
        return Ok(RelayOutcome::Busy);
    }
    Ok(RelayOutcome::Published {
        events: events.len(),
        cursor,
    })
}

/// Leadership of the relay on PostgreSQL: a session-level advisory lock held on a connection
/// of the relay's own. SQLite has no second process to elect against.
struct Leadership {
    connection: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

impl Leadership {
    /// Whether this process leads now, taking the lead if it is free.
    async fn lead(&mut self, log: &EventLog) -> bool {
        let eventlog::Db::Postgres(pool) = log.db() else {
            return true;
        };
        if let Some(connection) = &mut self.connection {
            if sqlx::query("SELECT 1")
                .execute(&mut **connection)
                .await
                .is_ok()
            {
                return true;
            }
            tracing::warn!("lost the relay's leader connection");
            self.connection = None;
        }
        let Ok(mut connection) = pool.acquire().await else {
            return false;
        };
        let locked: Result<bool, _> =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(runner::lock_key(CHECKPOINT))
                .fetch_one(&mut *connection)
                .await;
        if matches!(locked, Ok(true)) {
            tracing::info!("this process now leads the NATS relay");
            // The lock lives as long as this connection: keep it out of the pool.
            self.connection = Some(connection);
            true
        } else {
            false
        }
    }
}

/// Runs the relay until `shutdown`.
pub fn spawn(
    log: EventLog,
    settings: RelaySettings,
    status: Arc<RelayStatus>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = checkpoints::ensure(log.db(), CHECKPOINT).await {
            tracing::error!(%error, "could not create the relay checkpoint");
        }
        let client = match async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(settings.url.as_str())
            .await
        {
            Ok(client) => client,
            Err(error) => {
                status.failed(format!("connect: {error}"));
                tracing::error!(%error, "NATS connection could not be set up; the relay is off");
                return;
            }
        };
        let jetstream = jetstream::new(client);
        let mut appended = log.subscribe();
        let mut failures: u32 = 0;
        let mut stream_ready = false;
        let mut leadership = Leadership { connection: None };
        while !shutdown.is_cancelled() {
            appended.mark_unchanged();
            if !leadership.lead(&log).await {
                // A standby: look again soon, to take over quickly when the leader dies.
                status.ok();
                tokio::select! {
                    _ = tokio::time::sleep(settings.poll_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            if !stream_ready {
                match ensure_stream(&jetstream, &settings).await {
                    Ok(()) => {
                        stream_ready = true;
                        continue;
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        status.failed(format!("stream: {error}"));
                        tracing::warn!(%error, "JetStream stream not ready; retrying");
                        let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => {}
                        }
                        continue;
                    }
                }
            }
            let delay = match run_batch(&log, &jetstream, &settings).await {
                Ok(RelayOutcome::Published { events, cursor }) => {
                    failures = 0;
                    status.ok();
                    tracing::debug!(events, %cursor, "relayed batch");
                    if events == settings.batch_size {
                        continue;
                    }
                    settings.poll_interval
                }
                Ok(RelayOutcome::Idle | RelayOutcome::Busy) => {
                    failures = 0;
                    status.ok();
                    settings.poll_interval
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    status.failed(error.to_string());
                    tracing::warn!(%error, ?backoff, "relay batch failed; retrying");
                    backoff
                }
            };
            tokio::select! {
                _ = appended.changed(), if failures == 0 => {}
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    })
}

/// Moves the relay's checkpoint back to `from`, so that everything after it is published
/// again (`gateway relay replay`). A batch in flight then fails its compare-and-set, and the
/// next batch starts from `from`.
pub async fn replay_from(log: &EventLog, from: Cursor) -> Result<(), sqlx::Error> {
    let mut tx = log.db().begin().await?;
    checkpoints::write_in(&mut tx, CHECKPOINT, from).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::escape_token;

    #[test]
    fn subject_tokens_never_carry_separators_or_wildcards() {
        assert_eq!(escape_token("users/user-001"), "users%2Fuser-001");
        assert_eq!(escape_token("a.b*c>d e"), "a%2Eb%2Ac%3Ed%20e");
        assert_eq!(escape_token("ok_-09AZ"), "ok_-09AZ");
        assert_eq!(escape_token(""), "%00");
        assert_eq!(escape_token("é"), "%C3%A9");
    }
}
