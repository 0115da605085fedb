//! The downstream consumer pattern, runnable as `gateway subscribe`: a durable JetStream pull
//! consumer that applies each event exactly once in effect.
//!
//! At-least-once delivery is all a broker can give (a message whose ack is lost comes again),
//! so the consumer makes its effect idempotent: it records the event id in the same local
//! transaction as the effect, skips ids it has seen, and acknowledges with a double ack (waits
//! for the server to confirm) only after that transaction committed. A crash before the commit
//! redelivers and applies; a crash after it redelivers and skips.
//!
//! The effect here is storing the event in a local SQLite table (`received`); a real consumer
//! replaces it with its own writes, in the same transaction as the `processed` insert.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio_util::sync::CancellationToken;

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub url: String,
    pub stream: String,
    /// The durable consumer's name: it remembers its position across runs.
    pub durable: String,
    /// Only messages on these subjects, e.g. `gateway.acme.>`.
    pub filter_subject: Option<String>,
    /// The SQLite file holding processed event ids and the effects.
    pub state: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerReport {
    pub applied: u64,
    pub skipped_duplicates: u64,
}

/// Consumes until `shutdown`, or until `max` events were applied, or (with `until_idle`) until
/// no message arrives for that long. Writes each applied event's envelope to `out`.
pub async fn run(
    settings: &ConsumerSettings,
    max: Option<u64>,
    until_idle: Option<Duration>,
    out: &mut dyn Write,
    shutdown: CancellationToken,
) -> Result<ConsumerReport, async_nats::Error> {
    let options =
        SqliteConnectOptions::from_str(&format!("sqlite://{}", settings.state.display()))?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let state = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS processed (event_id TEXT PRIMARY KEY, processed_at TEXT NOT NULL)",
    )
    .execute(&state)
    .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS received (event_id TEXT PRIMARY KEY, subject TEXT NOT NULL, \
         envelope TEXT NOT NULL)",
    )
    .execute(&state)
    .await?;

    let client = async_nats::connect(settings.url.as_str()).await?;
    let jetstream = jetstream::new(client);
    let stream = jetstream.get_stream(&settings.stream).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &settings.durable,
            consumer::pull::Config {
                durable_name: Some(settings.durable.clone()),
                filter_subject: settings.filter_subject.clone().unwrap_or_default(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    let mut report = ConsumerReport::default();
    loop {
        if max.is_some_and(|max| report.applied >= max) {
            break;
        }
        let next = tokio::select! {
            next = messages.next() => next,
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(until_idle.unwrap_or(Duration::MAX)), if until_idle.is_some() => break,
        };
        let Some(message) = next else { break };
        let message = message?;
        let event_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string())
            .ok_or("a gateway message without Nats-Msg-Id")?;
        let envelope = String::from_utf8_lossy(&message.payload).to_string();

        let mut tx = state.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO processed (event_id, processed_at) VALUES ($1, $2) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&event_id)
        .bind(chrono::Utc::now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if fresh {
            // The effect, in the same transaction as the record that it happened.
            sqlx::query("INSERT INTO received (event_id, subject, envelope) VALUES ($1, $2, $3)")
                .bind(&event_id)
                .bind(message.subject.as_str())
                .bind(&envelope)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        message.double_ack().await?;
        if fresh {
            report.applied += 1;
            writeln!(out, "{envelope}")?;
            out.flush()?;
        } else {
            report.skipped_duplicates += 1;
        }
    }
    state.close().await;
    Ok(report)
}
