//! An aggregate as the log holds it: folded from its stream ([`fold`], [`Loaded`]), deciding a
//! command ([`decide_new`]), and what a command's run reports ([`CommandOutcome`],
//! [`CommandError`]).

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;

use crate::cursor::Cursor;
use crate::store::{AppendError, NewEvent, RecordedEvent};

/// The result of a command that the aggregate accepted.
#[derive(Debug)]
pub struct CommandOutcome<A> {
    /// The aggregate's state after the command.
    pub aggregate: A,
    /// The stream's version after the command.
    pub version: u64,
    /// The events the command recorded (empty when it changed nothing).
    pub events: Vec<std::sync::Arc<RecordedEvent>>,
    /// The cursor of the stream's last event: the one just written, or, when the command
    /// changed nothing, the latest one already there.
    pub cursor: Option<Cursor>,
    /// When the stream's first event was recorded.
    pub created_at: Option<DateTime<Utc>>,
    /// When the stream's last event was recorded.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Why a command did not record its events.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept changing the stream; nothing was written.
    #[error("the aggregate was modified concurrently; retry the command")]
    Conflict,
    #[error("a stored event could not be read: {0}")]
    Corrupt(serde_json::Error),
    #[error(transparent)]
    Append(AppendError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl<E: std::error::Error> From<AppendError> for CommandError<E> {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Database(error) => Self::Database(error),
            other => Self::Append(other),
        }
    }
}

/// A stream rebuilt into its aggregate.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub aggregate: A,
    pub version: u64,
    pub cursor: Option<Cursor>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Decides `command` on a new aggregate, without touching the log: for batches that create
/// several aggregates in one transaction (`EventLog::append_completing`).
pub async fn decide_new<A: Aggregate>(
    command: A::Command,
    services: &A::Services,
) -> Result<Vec<NewEvent>, CommandError<A::Error>> {
    let mut aggregate = A::default();
    let sink = EventSink::default();
    aggregate
        .handle(command, services, &sink)
        .await
        .map_err(CommandError::Rejected)?;
    sink.collect()
        .await
        .iter()
        .map(NewEvent::from_domain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CommandError::Append(AppendError::from(e)))
}

/// Folds a stream's events, in sequence order, into its aggregate.
pub fn fold<A: Aggregate>(history: &[RecordedEvent]) -> Result<Loaded<A>, CommandError<A::Error>> {
    let mut aggregate = A::default();
    for event in history {
        aggregate.apply(event.decode::<A::Event>().map_err(CommandError::Corrupt)?);
    }
    Ok(Loaded {
        aggregate,
        version: history.last().map_or(0, |e| e.sequence as u64),
        cursor: history.last().map(|e| e.cursor),
        created_at: history.first().map(|e| e.recorded_at),
        updated_at: history.last().map(|e| e.recorded_at),
    })
}
