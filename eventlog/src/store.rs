//! Appending to, loading from and tailing the `events` table.
//!
//! Guarantees (tested in `tests/eventlog.rs`):
//! - **Optimistic concurrency.** `(tenant_id, aggregate_type, aggregate_id, sequence)` is the
//!   primary key, and an append names the version it expects. Two writers racing on one
//!   stream: one commits, the other gets [`AppendError::Conflict`].
//! - **Atomic batches.** One [`Store::append`] call writes all events of all its streams in
//!   one transaction, or none. Rows are inserted in a fixed order (by stream, then sequence)
//!   so that two batches touching the same streams cannot deadlock.
//! - **Shared transactions.** [`Store::append_in`] writes into a caller's transaction, so
//!   several commands (and their idempotency records) can commit together.
//! - **Readers never skip.** [`Store::read_after`] returns events in cursor order and, on
//!   PostgreSQL, only those written by transactions older than the horizon: the oldest
//!   transaction running in the reader's snapshot that is not shown to be another program's
//!   (every gateway write transaction holds [`crate::db::APPENDER_LOCK`] from its first
//!   statement, before it has an id; a running transaction whose id lock belongs to a
//!   backend without it is not the gateway's), or the snapshot's next id. The horizon is
//!   read by the tail's own statement, from the snapshot the tail reads: every gateway
//!   transaction below it had finished in that snapshot, so the tail sees its events (a
//!   transaction that ends between the snapshot and the one read of `pg_locks` still counts
//!   as running, which only lowers the horizon; `pg_locks` is read once per statement, so a
//!   transaction's id lock and appender lock are seen at one instant). A transaction that is
//!   still open can therefore never commit "behind" a reader, and transactions of other
//!   databases, or of other programs, never hold readers back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, DurationRound, Utc};
use cqrs_es::DomainEvent;
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use serde_json::Value;
use sqlx::Row;
use sqlx::types::Json;
use tokio::sync::watch;
use uuid::Uuid;

use crate::cursor::Cursor;
use crate::db::{Backend, Db, Tx};
use crate::json::DeepJson;
use crate::sql::{Statement, Texts};

/// The PostgreSQL `NOTIFY` channel on which every append is announced, so that projectors
/// and relays in other processes wake up at once.
pub const NOTIFY_CHANNEL: &str = "gateway_events";

/// The streams of `read (t, a, i, v)` (tenant, aggregate type, id, and the version a command
/// decided on) that are at another version now: the check of reads made without reading.
const MOVED_READS: &str = "SELECT t, a, i FROM read WHERE v <> coalesce((SELECT max(sequence) \
     FROM events WHERE tenant_id = read.t AND aggregate_type = read.a \
     AND aggregate_id = read.i), 0)";

/// Most rows in one `INSERT` statement (keeps well under both engines' bind limits).
const INSERT_CHUNK: usize = 500;

/// One aggregate instance's stream of events: its [`StreamKey`], shared. A command's stream is
/// handed around a dozen times (the unit of work, its cache, the group commit, the reads it
/// checks); each copy is a reference count, not three strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<StreamKey>);

/// What names a stream: its tenant, aggregate type and aggregate id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub tenant_id: TenantId,
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl StreamId {
    pub fn new(
        tenant_id: TenantId,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> Self {
        Self(Arc::new(StreamKey {
            tenant_id,
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }))
    }
}

impl std::ops::Deref for StreamId {
    type Target = StreamKey;

    fn deref(&self) -> &StreamKey {
        &self.0
    }
}

impl std::fmt::Debug for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: String,
    /// The event's fields, without the enum tag (which is `event_type`); shared with the
    /// recorded event the append returns.
    pub payload: Arc<Value>,
    /// When the event happened, for imports and seeds that carry their original times;
    /// `None` (every command) records the time of the append.
    pub recorded_at: Option<DateTime<Utc>>,
}

impl NewEvent {
    /// Serializes a cqrs-es domain event. The payload stored is the variant's content, so
    /// that consumers of the log and of NATS read `{"id": …}`, not `{"EntityCreated": {…}}`.
    pub fn from_domain<E: DomainEvent>(event: &E) -> Result<Self, serde_json::Error> {
        let event_type = event.event_type();
        let payload = match serde_json::to_value(event)? {
            Value::Object(mut tagged) if tagged.len() == 1 => {
                tagged.remove(&event_type).unwrap_or(Value::Null)
            }
            // A unit variant serializes as its name alone.
            Value::String(_) => Value::Null,
            other => other,
        };
        Ok(Self {
            event_id: Uuid::now_v7(),
            event_type,
            event_version: event.event_version(),
            payload: Arc::new(payload),
            recorded_at: None,
        })
    }
}

/// The events one command adds to one stream.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream: StreamId,
    /// The stream's version (its last sequence) that the events were decided against.
    pub expected_version: u64,
    pub events: Vec<NewEvent>,
    pub metadata: EventMetadata,
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub cursor: Cursor,
    pub event_id: Uuid,
    pub tenant_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// Shared with the event as appended, and with the log's in-memory copies.
    pub payload: Arc<Value>,
    /// Shared by the events of one command.
    pub metadata: Arc<Value>,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Deserializes the payload as the domain event enum `E`.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, serde_json::Error> {
        use serde::de::IntoDeserializer;
        use serde::de::value::{MapAccessDeserializer, MapDeserializer, StrDeserializer};
        // Externally tagged, read in place: `"Type"` for a unit variant, else
        // `{"Type": payload}` (without copying the payload into such a map).
        if self.payload.is_null() {
            let tag: StrDeserializer<'_, serde_json::Error> =
                self.event_type.as_str().into_deserializer();
            return E::deserialize(tag);
        }
        E::deserialize(MapAccessDeserializer::new(MapDeserializer::<
            _,
            serde_json::Error,
        >::new(std::iter::once(
            (self.event_type.as_str(), &*self.payload),
        ))))
    }

    /// The event as it travels to subscribers (NATS, Server-Sent Events, the change feed): one
    /// documented JSON shape with its position, identity, payload and metadata, without the
    /// payload fields its visibility keeps inside the gateway (a key's hash).
    pub fn envelope(&self) -> Value {
        let visibility = self.visibility();
        let payload = match &*self.payload {
            Value::Object(fields)
                if visibility
                    .internal_fields
                    .iter()
                    .any(|f| fields.contains_key(*f)) =>
            {
                let mut fields = fields.clone();
                for field in visibility.internal_fields {
                    fields.remove(*field);
                }
                Value::Object(fields)
            }
            _ => Value::clone(&self.payload),
        };
        serde_json::json!({
            "eventId": self.event_id,
            "cursor": self.cursor.to_string(),
            "tenantId": self.tenant_id,
            "aggregateType": self.aggregate_type,
            "aggregateId": self.aggregate_id,
            "sequence": self.sequence,
            "eventType": self.event_type,
            "eventVersion": self.event_version,
            "recordedAt": self.recorded_at,
            "payload": payload,
            "metadata": self.metadata,
        })
    }

    /// An estimate of the heap the event holds.
    pub(crate) fn weight(&self) -> usize {
        256 + self.tenant_id.len()
            + self.aggregate_type.len()
            + self.aggregate_id.len()
            + self.event_type.len()
            + crate::recent::value_weight(&self.payload)
            + crate::recent::value_weight(&self.metadata)
    }

    /// Who may read this event outside the gateway (see [`domain::visibility`]).
    pub fn visibility(&self) -> domain::visibility::Visibility {
        domain::visibility::of(&self.aggregate_type, &self.event_type)
    }

    /// The metadata, when it has the current shape.
    pub fn event_metadata(&self) -> Option<EventMetadata> {
        serde::Deserialize::deserialize(&*self.metadata).ok()
    }
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The events in the order they were given, shared with the events this process keeps
    /// for its readers (see [`crate::recent`]).
    pub events: Vec<Arc<RecordedEvent>>,
}

impl Appended {
    /// The cursor of the last event written, if any.
    pub fn last_cursor(&self) -> Option<Cursor> {
        self.events.iter().map(|e| e.cursor).max()
    }
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to `stream` since its expected version was read. Nothing of the
    /// batch was written. `stream` is `None` when the conflicting stream of a multi-stream
    /// batch in a caller's transaction could not be told.
    #[error("concurrent modification of a stream")]
    Conflict { stream: Option<StreamId> },
    #[error("event could not be serialized: {0}")]
    Serialization(#[from] serde_json::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// An inline projection could not read an event of the batch it was given (the batch was
    /// written by this process a moment ago, so this is a defect, never bad input).
    #[error("inline projection {projection} could not read event {event_id}: {source}")]
    Inline {
        projection: &'static str,
        event_id: Uuid,
        source: serde_json::Error,
    },
}

/// Number of in-process stream locks (see [`Store::stream_lock`]).
const STREAM_LOCKS: usize = 4096;

pub(crate) struct Inner {
    db: Db,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    appended: watch::Sender<Cursor>,
    stream_locks: Vec<tokio::sync::Mutex<()>>,
    hasher: std::hash::RandomState,
    inline: Vec<Arc<dyn InlineProjection>>,
    /// Whether idempotency records from before keys had a scope may exist (the idempotency
    /// module's state: unknown, present or gone; see `idempotency::LEGACY_SCOPE`).
    legacy_keys: std::sync::atomic::AtomicU8,
    /// The events this process committed last (see [`crate::recent`]).
    recent: crate::recent::Recent<Arc<RecordedEvent>>,
}

/// A read model updated in the same transaction as the events it is made of, for the few
/// facts a command must read exactly as of the last commit (a budget's spend). Everything
/// else is an asynchronous `Projector`, which keeps appends short.
pub trait InlineProjection: Send + Sync + 'static {
    /// Applies freshly appended events inside the append's transaction.
    fn apply<'a>(
        &'a self,
        tx: &'a mut Tx,
        events: &'a [RecordedEvent],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AppendError>> + Send + 'a>>;
}

/// The `events` table: appends and reads inside a transaction or in their own. Cheap to
/// clone; clones share the in-process "appended" signal. [`crate::EventLog`] builds on it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.db.backend())
            .finish_non_exhaustive()
    }
}

/// The columns of [`RecordedEvent`] on PostgreSQL, with `$metadata` for the metadata.
macro_rules! pg_columns {
    ($metadata:literal) => {
        concat!(
            "global_position, transaction_id::text::bigint AS transaction_id, event_id, \
             tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, \
             payload, ",
            $metadata,
            ", recorded_at"
        )
    };
}

/// The columns of [`RecordedEvent`] on SQLite, with `$metadata` for the metadata.
macro_rules! sqlite_columns {
    ($metadata:literal) => {
        concat!(
            "global_position, 0 AS transaction_id, event_id, tenant_id, aggregate_type, \
             aggregate_id, sequence, event_type, event_version, payload, ",
            $metadata,
            ", recorded_at"
        )
    };
}

const PG_COLUMNS: &str = pg_columns!("metadata");
/// The cursor and id of each event (the light tail: see [`crate::recent`]), read as
/// `PG_COLUMNS` and `SQLITE_COLUMNS` read them.
fn id_columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => {
            "transaction_id::text::bigint AS transaction_id, global_position, event_id"
        }
        Backend::Sqlite => "0 AS transaction_id, global_position, event_id",
    }
}

const SQLITE_COLUMNS: &str = sqlite_columns!("metadata");

/// One `events` row selected with `PG_COLUMNS` or `SQLITE_COLUMNS`, on either backend.
impl<'r, R: Row> sqlx::FromRow<'r, R> for RecordedEvent
where
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DeepJson: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let payload: DeepJson = row.try_get("payload")?;
        let metadata: DeepJson = row.try_get("metadata")?;
        Ok(RecordedEvent {
            cursor: Cursor::new(
                row.try_get("transaction_id")?,
                row.try_get("global_position")?,
            ),
            event_id: row.try_get("event_id")?,
            tenant_id: row.try_get("tenant_id")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: Arc::new(payload.0),
            metadata: Arc::new(metadata.0),
            recorded_at: row.try_get("recorded_at")?,
        })
    }
}

impl Store {
    /// See [`Inner::legacy_keys`].
    pub(crate) fn legacy_keys(&self) -> &std::sync::atomic::AtomicU8 {
        &self.inner.legacy_keys
    }

    /// A store that keeps `inline` projections up to date in the transaction of every append.
    pub fn with_inline(
        db: Db,
        upcasters: Vec<Box<dyn EventUpcaster>>,
        inline: Vec<Arc<dyn InlineProjection>>,
    ) -> Self {
        let (appended, _) = watch::channel(Cursor::START);
        Self {
            inner: Arc::new(Inner {
                db,
                upcasters,
                appended,
                stream_locks: (0..STREAM_LOCKS).map(|_| Default::default()).collect(),
                hasher: Default::default(),
                inline,
                legacy_keys: Default::default(),
                recent: Default::default(),
            }),
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// A handle that does not keep the store alive (for the committer task).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The in-process lock that commands on `stream` take turns on. Striped: unrelated
    /// streams share a lock only by hash collision, which costs a short wait, never a
    /// deadlock (a command holds one stripe at a time).
    pub fn stream_lock(&self, stream: &StreamId) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher;
        let index = self.inner.hasher.hash_one(stream) as usize % STREAM_LOCKS;
        &self.inner.stream_locks[index]
    }

    /// A receiver that changes whenever this process appends to the log. Other processes'
    /// appends arrive through PostgreSQL `LISTEN` (see the workers crate), which calls
    /// [`Store::notify_appended`].
    pub fn subscribe(&self) -> watch::Receiver<Cursor> {
        self.inner.appended.subscribe()
    }

    /// Commits `tx`, in which `events` were appended, and wakes this process's readers. The
    /// events are kept for those readers before the commit, so that a reader the commit
    /// wakes another way (PostgreSQL's announcement, or a reader already running) finds them
    /// instead of reading them back; a reader takes only events the log shows committed, and
    /// a failed commit forgets them.
    pub async fn commit_appended<'e>(
        &self,
        tx: Tx,
        events: impl IntoIterator<Item = &'e Arc<RecordedEvent>>,
    ) -> Result<(), sqlx::Error> {
        let events: Vec<&Arc<RecordedEvent>> = events.into_iter().collect();
        self.inner.recent.remember(
            events
                .iter()
                .map(|event| (event.event_id, event.weight(), *event)),
        );
        if let Err(error) = tx.commit().await {
            self.inner
                .recent
                .forget(events.iter().map(|event| event.event_id));
            return Err(error);
        }
        if let Some(cursor) = events.iter().map(|e| e.cursor).max() {
            self.notify_appended(cursor);
        }
        Ok(())
    }

    /// Wakes every in-process reader of the log.
    pub fn notify_appended(&self, cursor: Cursor) {
        self.inner
            .appended
            .send_modify(|last| *last = (*last).max(cursor));
    }

    /// Appends a batch atomically in its own transaction.
    pub async fn append(&self, batch: &[StreamAppend]) -> Result<Appended, AppendError> {
        self.append_completing(batch, None, |_| None)
            .await
            .map(|(appended, _)| appended)
    }

    /// Appends a batch atomically and, when `completion` is given and `respond` makes a
    /// response of what was appended, stores it as that key's idempotency record in the same
    /// transaction.
    pub async fn append_completing(
        &self,
        batch: &[StreamAppend],
        completion: Option<&crate::idempotency::IdempotencyKey>,
        respond: impl FnOnce(&Appended) -> Option<crate::idempotency::StoredResponse>,
    ) -> Result<(Appended, Option<crate::idempotency::StoredResponse>), AppendError> {
        use tracing::Instrument;
        let span = crate::traced_span!("commit", grouped = false);
        self.append_completing_traced(batch, completion, respond)
            .instrument(span)
            .await
    }

    async fn append_completing_traced(
        &self,
        batch: &[StreamAppend],
        completion: Option<&crate::idempotency::IdempotencyKey>,
        respond: impl FnOnce(&Appended) -> Option<crate::idempotency::StoredResponse>,
    ) -> Result<(Appended, Option<crate::idempotency::StoredResponse>), AppendError> {
        let mut tx = self.inner.db.begin().await?;
        let appended = match self.append_in(&mut tx, batch).await {
            Ok(appended) => appended,
            Err(error) => {
                tx.rollback().await?;
                return Err(match error {
                    AppendError::Conflict { stream: None } => AppendError::Conflict {
                        stream: self.find_conflict(batch).await?,
                    },
                    other => other,
                });
            }
        };
        let response = respond(&appended);
        if let (Some(key), Some(response)) = (completion, &response) {
            self.complete_idempotency_in(&mut tx, key, response).await?;
        }
        self.commit_appended(tx, &appended.events).await?;
        Ok((appended, response))
    }

    /// Appends a batch inside the caller's transaction. Nothing is visible until the caller
    /// commits; after the commit, the caller should call [`Store::notify_appended`].
    /// On [`AppendError::Conflict`] the transaction is no longer usable on PostgreSQL and must
    /// be rolled back (or the append wrapped in a savepoint).
    pub async fn append_in<A: std::borrow::Borrow<StreamAppend>>(
        &self,
        tx: &mut Tx,
        batch: &[A],
    ) -> Result<Appended, AppendError> {
        // Without reads to check, every row is written or the statement fails.
        self.append_unless_moved_in(tx, batch, &[])
            .await?
            .ok_or(AppendError::Conflict { stream: None })
    }

    /// [`Store::append_in`], unless a stream of `reads` (a stream and the version a command
    /// decided on without reading it) has another version now: then nothing is written and
    /// the answer is `None` ([`Store::stale_reads_in`] tells which moved). The check rides in
    /// the first insert statement, so a group commit's common case is one round trip fewer.
    pub async fn append_unless_moved_in<A: std::borrow::Borrow<StreamAppend>>(
        &self,
        tx: &mut Tx,
        batch: &[A],
        reads: &[(StreamId, u64)],
    ) -> Result<Option<Appended>, AppendError> {
        // Each event with the index of its append, in the order given.
        let mut rows: Vec<(usize, i64, &NewEvent)> = Vec::new();
        for (index, append) in batch.iter().enumerate() {
            let append = append.borrow();
            for (offset, event) in append.events.iter().enumerate() {
                let sequence = append.expected_version as i64 + offset as i64 + 1;
                rows.push((index, sequence, event));
            }
        }
        if rows.is_empty() {
            let moved = !reads.is_empty() && !self.stale_reads_in(tx, reads).await?.is_empty();
            return Ok((!moved).then(|| Appended { events: Vec::new() }));
        }
        let stream_of = |index: usize| &batch[index].borrow().stream;
        // Fixed insertion order: by stream, then sequence. Two batches that touch the same
        // streams take their index locks in the same order and cannot deadlock.
        let mut ordered = rows.clone();
        ordered.sort_by(|a, b| (stream_of(a.0), a.1).cmp(&(stream_of(b.0), b.1)));

        // Both engines store microseconds; truncating here makes what is returned to the
        // caller identical to what a later read gives.
        let recorded_at = Utc::now()
            .duration_trunc(chrono::TimeDelta::microseconds(1))
            .unwrap_or_else(|_| Utc::now());
        let metadata: Vec<Arc<Value>> = batch
            .iter()
            .map(|append| serde_json::to_value(&append.borrow().metadata).map(Arc::new))
            .collect::<Result<_, _>>()?;

        let stored = ordered.iter().map(|&(index, sequence, event)| {
            let stream = stream_of(index);
            Stored {
                event_id: event.event_id,
                tenant_id: stream.tenant_id.as_str(),
                aggregate_type: &stream.aggregate_type,
                aggregate_id: &stream.aggregate_id,
                sequence,
                event_type: &event.event_type,
                event_version: &event.event_version,
                payload: &event.payload,
                metadata: &metadata[index],
                recorded_at: event.recorded_at.unwrap_or(recorded_at),
            }
        });
        let written = match insert_rows(tx, stored, reads).await {
            Ok(Some(written)) => written,
            Ok(None) => return Ok(None),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                let stream = (batch.len() == 1).then(|| stream_of(0).clone());
                return Err(AppendError::Conflict { stream });
            }
            Err(error) => return Err(error.into()),
        };
        let events: Vec<RecordedEvent> = rows
            .into_iter()
            .map(|(index, sequence, event)| {
                let stream = stream_of(index);
                let (transaction_id, position) = written[&event.event_id];
                RecordedEvent {
                    cursor: Cursor::new(transaction_id, position),
                    event_id: event.event_id,
                    tenant_id: stream.tenant_id.to_string(),
                    aggregate_type: stream.aggregate_type.clone(),
                    aggregate_id: stream.aggregate_id.clone(),
                    sequence,
                    event_type: event.event_type.clone(),
                    event_version: event.event_version.clone(),
                    payload: event.payload.clone(),
                    metadata: metadata[index].clone(),
                    recorded_at: event.recorded_at.unwrap_or(recorded_at),
                }
            })
            .collect();
        self.apply_inline(tx, &events).await?;
        Ok(Some(Appended {
            events: events.into_iter().map(Arc::new).collect(),
        }))
    }

    /// Writes events read from an export (see [`crate::transfer`]) inside the caller's
    /// transaction, in the order given, keeping their ids, streams, sequences, types, versions,
    /// payloads, metadata and times; the log gives them new cursors, in that order. The inline
    /// projections see them as they see any append. A stream position that is taken is a
    /// [`AppendError::Conflict`]; the caller checks that streams continue without gaps.
    pub async fn import_in(
        &self,
        tx: &mut Tx,
        events: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>, AppendError> {
        let stored = events.iter().map(|event| Stored {
            event_id: event.event_id,
            tenant_id: &event.tenant_id,
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
            recorded_at: event.recorded_at,
        });
        let written = match insert_rows(tx, stored, &[]).await {
            Ok(Some(written)) => written,
            Ok(None) => return Err(AppendError::Conflict { stream: None }),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                return Err(AppendError::Conflict { stream: None });
            }
            Err(error) => return Err(error.into()),
        };
        let events: Vec<RecordedEvent> = events
            .into_iter()
            .map(|mut event| {
                let (transaction_id, position) = written[&event.event_id];
                event.cursor = Cursor::new(transaction_id, position);
                event
            })
            .collect();
        self.apply_inline(tx, &events).await?;
        Ok(events)
    }

    /// Brings the inline projections up to date with `events`, just written in `tx`.
    async fn apply_inline(&self, tx: &mut Tx, events: &[RecordedEvent]) -> Result<(), AppendError> {
        for inline in &self.inner.inline {
            inline.apply(tx, events).await?;
        }
        Ok(())
    }

    /// After a failed batch: the first stream whose stored version moved past the expected one.
    async fn find_conflict(&self, batch: &[StreamAppend]) -> Result<Option<StreamId>, sqlx::Error> {
        for append in batch {
            if self.version(&append.stream).await? != append.expected_version {
                return Ok(Some(append.stream.clone()));
            }
        }
        Ok(None)
    }

    /// The stream's current version: its last sequence, 0 when it has no events.
    pub async fn version(&self, stream: &StreamId) -> Result<u64, sqlx::Error> {
        let version: Option<i64> = self
            .inner
            .db
            .fetch_one(
                Statement::new(
                    "SELECT max(sequence) FROM events \
                     WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3",
                )
                .bind(stream.tenant_id.as_str())
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str()),
            )
            .await?
            .try_get(0)?;
        Ok(version.unwrap_or(0) as u64)
    }

    /// Loads a stream's events with a sequence above `after_sequence`, upcast to their current
    /// versions.
    pub async fn load(
        &self,
        stream: &StreamId,
        after_sequence: u64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let where_clause = "WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3 \
                            AND sequence > $4 ORDER BY sequence";
        let sql = format!(
            "SELECT {} FROM events {where_clause}",
            columns(self.inner.db.backend())
        );
        let events = self
            .inner
            .db
            .fetch_all_as::<RecordedEvent>(
                Statement::new(&sql)
                    .bind(stream.tenant_id.as_str())
                    .bind(stream.aggregate_type.as_str())
                    .bind(stream.aggregate_id.as_str())
                    .bind(after_sequence as i64),
            )
            .await?;
        Ok(self.upcast_all(events))
    }

    /// Which of `reads` (a stream and the version a command decided on) have another version
    /// now, read inside `tx`. Each distinct read is checked once (the commands of a group
    /// mostly read the same cached entity type). PostgreSQL: one prepared statement over
    /// arrays, whatever the number of reads; SQLite: one query per 300 streams.
    pub async fn stale_reads_in(
        &self,
        tx: &mut Tx,
        reads: &[(StreamId, u64)],
    ) -> Result<Vec<StreamId>, sqlx::Error> {
        let mut seen = HashSet::with_capacity_and_hasher(reads.len(), crate::FastHasher::default());
        let distinct: Vec<&(StreamId, u64)> = reads.iter().filter(|r| seen.insert(*r)).collect();
        let moved: Vec<(String, String, String)> = match tx {
            Tx::Postgres(_) => {
                let column = |f: fn(&(StreamId, u64)) -> &str| -> Vec<&str> {
                    distinct.iter().map(|read| f(read)).collect()
                };
                let versions: Vec<i64> = distinct.iter().map(|(_, v)| *v as i64).collect();
                let sql = format!(
                    "WITH read (t, a, i, v) AS (SELECT * FROM \
                     unnest($1::text[], $2::text[], $3::text[], $4::int8[])) {MOVED_READS}"
                );
                tx.fetch_all_as(
                    Statement::new(&sql)
                        .bind(column(|(s, _)| s.tenant_id.as_str()))
                        .bind(column(|(s, _)| s.aggregate_type.as_str()))
                        .bind(column(|(s, _)| s.aggregate_id.as_str()))
                        .bind(versions),
                )
                .await?
            }
            Tx::Sqlite(conn) => {
                let mut moved = Vec::new();
                for chunk in distinct.chunks(300) {
                    let sql = format!(
                        "WITH read (t, a, i, v) AS (VALUES {}) {MOVED_READS}",
                        crate::Backend::Sqlite.values(chunk.len(), 4)
                    );
                    let mut query = sqlx::query_as(&sql).persistent(false);
                    for (stream, version) in chunk {
                        query = query
                            .bind(stream.tenant_id.as_str())
                            .bind(stream.aggregate_type.as_str())
                            .bind(stream.aggregate_id.as_str())
                            .bind(*version as i64);
                    }
                    moved.extend(query.fetch_all(&mut **conn).await?);
                }
                moved
            }
        };
        Ok(reads
            .iter()
            .map(|(stream, _)| stream)
            .filter(|s| {
                moved.iter().any(|(t, a, i)| {
                    s.tenant_id.as_str() == t && s.aggregate_type == *a && s.aggregate_id == *i
                })
            })
            .cloned()
            .collect())
    }

    /// The events of several streams of one tenant, in one query: stream by stream, each in
    /// sequence order (a unit of work reads the streams of a batch of commands at once).
    pub async fn load_many(&self, streams: &[StreamId]) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let Some(first) = streams.first() else {
            return Ok(Vec::new());
        };
        debug_assert!(streams.iter().all(|s| s.tenant_id == first.tenant_id));
        // A join with the list of streams: each is one lookup in the stream index, on both
        // engines (an OR of the streams makes SQLite scan the tenant's whole log).
        let wanted: Vec<String> = (0..streams.len())
            .map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3))
            .collect();
        let (with, from) = (
            format!("WITH wanted (t, i) AS (VALUES {})", wanted.join(", ")),
            "FROM wanted CROSS JOIN events \
             WHERE tenant_id = $1 AND aggregate_type = wanted.t AND aggregate_id = wanted.i \
             ORDER BY aggregate_type, aggregate_id, sequence",
        );
        let sql = format!("{with} SELECT {} {from}", columns(self.inner.db.backend()));
        let mut query = Statement::new(&sql)
            .persistent(false)
            .bind(first.tenant_id.as_str());
        for stream in streams {
            query.push(stream.aggregate_type.as_str());
            query.push(stream.aggregate_id.as_str());
        }
        let events = self.inner.db.fetch_all_as::<RecordedEvent>(query).await?;
        Ok(self.upcast_all(events))
    }

    /// Up to `limit` events after `after`, in cursor order, upcast. Never returns an event
    /// that could be followed by an earlier one committing later.
    pub async fn read_after(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.tail(None, after, limit)
            .await
            .map(|events| self.upcast_all(events))
    }

    /// [`Store::read_after`] without the events' metadata (each event's `metadata` is `null`),
    /// for a reader that never looks at it: a projection rebuild, which then parses about half
    /// the JSON. Events this process keeps are given whole.
    pub async fn read_after_without_metadata(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.tail_with(None, after, limit, columns_without_metadata)
            .await
            .map(|events| self.upcast_all(events))
    }

    /// [`Store::read_after`] without upcasting: the events exactly as stored (exports).
    pub async fn read_stored_after(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.tail(None, after, limit).await
    }

    /// [`Store::read_after`] restricted to one tenant's events (live streams, change feeds).
    pub async fn read_tenant_after(
        &self,
        tenant_id: &str,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.tail(Some(tenant_id), after, limit)
            .await
            .map(|events| self.upcast_all(events))
    }

    /// The events after `after` as stored, not upcast.
    async fn tail(
        &self,
        tenant_id: Option<&str>,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        self.tail_with(tenant_id, after, limit, columns).await
    }

    /// [`Store::tail`], selecting `columns` of the backend.
    async fn tail_with(
        &self,
        tenant_id: Option<&str>,
        after: Cursor,
        limit: usize,
        columns: fn(Backend) -> &'static str,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let db = &self.inner.db;
        if tenant_id.is_none() && !self.inner.recent.is_empty() {
            let sql = tail_sql(db.backend(), false, id_columns(db.backend()));
            let ids = db
                .fetch_all_as::<(i64, i64, Uuid)>(tail_statement(
                    &sql,
                    db.backend(),
                    after,
                    limit,
                    None,
                ))
                .await?;
            if let Some(events) = self.kept(&ids) {
                return Ok(events);
            }
        }
        let sql = tail_sql(db.backend(), tenant_id.is_some(), columns(db.backend()));
        db.fetch_all_as(tail_statement(&sql, db.backend(), after, limit, tenant_id))
            .await
    }

    /// The events `ids` (cursor and id, in log order) names, when this process keeps every one
    /// of them (see [`crate::recent`]).
    fn kept(&self, ids: &[(i64, i64, Uuid)]) -> Option<Vec<RecordedEvent>> {
        Some(
            self.kept_shared(ids)?
                .into_iter()
                .map(Arc::unwrap_or_clone)
                .collect(),
        )
    }

    /// [`Store::kept`], shared: each event as kept, with the cursor the log gave it (the one
    /// its insert returned, so a copy is made only if they ever differ).
    fn kept_shared(&self, ids: &[(i64, i64, Uuid)]) -> Option<Vec<Arc<RecordedEvent>>> {
        let wanted: Vec<Uuid> = ids.iter().map(|(_, _, id)| *id).collect();
        let kept = self.inner.recent.take(&wanted)?;
        Some(
            kept.into_iter()
                .zip(ids)
                .map(|(event, (transaction_id, position, _))| {
                    let cursor = Cursor::new(*transaction_id, *position);
                    if event.cursor == cursor {
                        return event;
                    }
                    let mut event = Arc::unwrap_or_clone(event);
                    event.cursor = cursor;
                    Arc::new(event)
                })
                .collect(),
        )
    }

    /// The cursor of the last readable event: a reader starting there sees every event that
    /// becomes readable later, and none before.
    pub async fn head(&self) -> Result<Cursor, sqlx::Error> {
        let db = &self.inner.db;
        let last = match db.backend() {
            Backend::Postgres => {
                let sql = format!(
                    "SELECT transaction_id::text::bigint AS transaction_id, global_position \
                     FROM events WHERE transaction_id < ({PG_HORIZON})::text::xid8 \
                     ORDER BY events.transaction_id DESC, events.global_position DESC \
                     LIMIT 1"
                );
                db.fetch_optional_as::<(i64, i64)>(Statement::new(&sql))
                    .await?
            }
            Backend::Sqlite => {
                let sql = "SELECT 0 AS transaction_id, global_position FROM events \
                           ORDER BY global_position DESC LIMIT 1";
                db.fetch_optional_as::<(i64, i64)>(Statement::new(sql))
                    .await?
            }
        };
        Ok(last.map_or(Cursor::START, |(transaction_id, position)| {
            Cursor::new(transaction_id, position)
        }))
    }

    /// The cursor of the last committed event, readable yet or not: on PostgreSQL an event
    /// becomes readable once every older gateway transaction of the database has ended, so
    /// this can be ahead of [`Store::head`]. A reader that has reached it has seen everything committed
    /// before the call.
    pub async fn last_committed(&self) -> Result<Cursor, sqlx::Error> {
        match self.inner.db.backend() {
            Backend::Postgres => {
                let sql = "SELECT transaction_id::text::bigint AS transaction_id, global_position \
                           FROM events ORDER BY transaction_id DESC, global_position DESC LIMIT 1";
                let last = self
                    .inner
                    .db
                    .fetch_optional_as::<(i64, i64)>(Statement::new(sql))
                    .await?;
                Ok(last.map_or(Cursor::START, |(transaction_id, position)| {
                    Cursor::new(transaction_id, position)
                }))
            }
            // One writer: every committed event is readable.
            Backend::Sqlite => self.head().await,
        }
    }

    /// [`Store::read_after`] inside a transaction, so that a projector reads and applies
    /// under the same lock. On SQLite the write transaction sees every committed event. The
    /// events are shared: those this process kept are handed out as kept, not copied.
    pub async fn read_after_in(
        &self,
        tx: &mut Tx,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<Arc<RecordedEvent>>, sqlx::Error> {
        let backend = tx.backend();
        if !self.inner.recent.is_empty() {
            let sql = tail_sql(backend, false, id_columns(backend));
            let ids = tx
                .fetch_all_as::<(i64, i64, Uuid)>(tail_statement(&sql, backend, after, limit, None))
                .await?;
            if let Some(events) = self.kept_shared(&ids) {
                return Ok(events.into_iter().map(|e| self.upcast_shared(e)).collect());
            }
        }
        let sql = tail_sql(backend, false, columns(backend));
        let events = tx
            .fetch_all_as(tail_statement(&sql, backend, after, limit, None))
            .await?;
        Ok(self.upcast_all(events).into_iter().map(Arc::new).collect())
    }

    /// Every committed event of `aggregate_type` after `after` that `tx` sees, at most `limit`,
    /// in log order, without waiting for older transactions: for a caller that has locked out
    /// the writers it must not miss (a repair holding a table lock), not for tailing.
    pub async fn committed_in(
        &self,
        tx: &mut Tx,
        aggregate_type: &str,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let statement = match tx.backend() {
            Backend::Postgres => format!(
                "SELECT {PG_COLUMNS} FROM events \
                 WHERE aggregate_type = $1 \
                   AND (transaction_id, global_position) > ($2::text::xid8, $3) \
                 ORDER BY events.transaction_id, events.global_position LIMIT $4"
            ),
            Backend::Sqlite => format!(
                "SELECT {SQLITE_COLUMNS} FROM events \
                 WHERE aggregate_type = $1 AND global_position > $3 \
                 ORDER BY global_position LIMIT $4"
            ),
        };
        let events = tx
            .fetch_all_as(
                Statement::new(&statement)
                    .bind(aggregate_type)
                    .bind(after.transaction_id.to_string())
                    .bind(after.position)
                    .bind(limit as i64),
            )
            .await?;
        Ok(self.upcast_all(events))
    }

    /// How far the log is ahead of `cursor`: the number of readable events after it and the
    /// time the oldest of them was recorded.
    pub async fn backlog(
        &self,
        cursor: Cursor,
    ) -> Result<(u64, Option<DateTime<Utc>>), sqlx::Error> {
        self.backlog_counted(cursor, None).await
    }

    /// [`Store::backlog`], counting at most `limit` events: the cost of a lag measured on a
    /// large log (a projector far behind, or new) stays bounded. A count of `limit` means
    /// at least that many.
    pub async fn backlog_up_to(
        &self,
        cursor: Cursor,
        limit: u64,
    ) -> Result<(u64, Option<DateTime<Utc>>), sqlx::Error> {
        self.backlog_counted(cursor, Some(limit)).await
    }

    async fn backlog_counted(
        &self,
        cursor: Cursor,
        limit: Option<u64>,
    ) -> Result<(u64, Option<DateTime<Utc>>), sqlx::Error> {
        let db = &self.inner.db;
        let bound = limit.map_or(String::new(), |l| {
            format!(" LIMIT {}", l.min(i64::MAX as u64))
        });
        let (behind, oldest): (i64, Option<DateTime<Utc>>) = match db.backend() {
            Backend::Postgres => {
                let after = "(transaction_id, global_position) > ($1::text::xid8, $2)";
                // In the index's order: the planner cannot estimate the row comparison and
                // would otherwise scan the whole table, even for a reader that is caught up.
                let sql = format!(
                    "SELECT (SELECT count(*) FROM (SELECT 1 FROM events WHERE {after} \
                     ORDER BY transaction_id, global_position{bound}) AS b) AS behind, \
                     (SELECT recorded_at FROM events WHERE {after} \
                     ORDER BY transaction_id, global_position LIMIT 1) AS oldest"
                );
                db.fetch_one(
                    Statement::new(&sql)
                        .persistent(false)
                        .bind(cursor.transaction_id.to_string())
                        .bind(cursor.position),
                )
                .await?
                .decode()?
            }
            Backend::Sqlite => {
                let sql = format!(
                    "SELECT (SELECT count(*) FROM (SELECT 1 FROM events \
                     WHERE global_position > $1{bound})) AS behind, (SELECT recorded_at \
                     FROM events WHERE global_position > $1 ORDER BY global_position LIMIT 1) \
                     AS oldest"
                );
                db.fetch_one(Statement::new(&sql).bind(cursor.position))
                    .await?
                    .decode()?
            }
        };
        Ok((behind as u64, oldest))
    }

    fn upcast_all(&self, events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
        if self.inner.upcasters.is_empty() {
            return events;
        }
        events.into_iter().map(|event| self.upcast(event)).collect()
    }

    /// Whether an upcaster applies to `event`.
    fn needs_upcast(&self, event: &RecordedEvent) -> bool {
        self.inner
            .upcasters
            .iter()
            .any(|u| u.can_upcast(&event.event_type, &event.event_version))
    }

    /// [`Store::upcast`] of a shared event, copied only when an upcaster applies.
    fn upcast_shared(&self, event: Arc<RecordedEvent>) -> Arc<RecordedEvent> {
        if !self.needs_upcast(&event) {
            return event;
        }
        Arc::new(self.upcast(Arc::unwrap_or_clone(event)))
    }

    fn upcast(&self, event: RecordedEvent) -> RecordedEvent {
        if !self.needs_upcast(&event) {
            return event;
        }
        let mut serialized = SerializedEvent::new(
            event.aggregate_id.clone(),
            event.sequence as usize,
            event.aggregate_type.clone(),
            event.event_type.clone(),
            event.event_version.clone(),
            Value::clone(&event.payload),
            Value::clone(&event.metadata),
        );
        for upcaster in &self.inner.upcasters {
            if upcaster.can_upcast(&serialized.event_type, &serialized.event_version) {
                serialized = upcaster.upcast(serialized);
            }
        }
        RecordedEvent {
            event_type: serialized.event_type,
            event_version: serialized.event_version,
            payload: Arc::new(serialized.payload),
            metadata: Arc::new(serialized.metadata),
            ..event
        }
    }
}

/// The horizon of the log's readers on PostgreSQL, as a 64-bit transaction id: the oldest
/// transaction still running in this statement's snapshot that is not shown, by `pg_locks`,
/// to be another program's (a transaction whose own id lock is held by a backend that does
/// not hold the appender lock in this database: gateway transactions take that lock in
/// their `BEGIN`, before they have an id, so one with an id and without the lock is never
/// the gateway's); the snapshot's next id when there is none. A running transaction that
/// cannot be told apart (its id not yet in `pg_locks`, an instant after it got it) counts as
/// an appender: the horizon errs towards waiting, never towards skipping. `pg_locks` is read
/// once (`locks`, materialized), so a transaction's id lock and its appender lock are seen at
/// one instant: two reads could find the id lock in the first and the appender lock already
/// released in the second, and take a transaction that was running in the snapshot, and
/// whose events the snapshot does not see, for another program's. Read at one instant, a
/// transaction that was running in the snapshot shows both locks or no id lock (PostgreSQL
/// releases a transaction's id lock before its advisory locks: `ProcReleaseLocks`), and is
/// counted either way. A subquery of the statement that reads below it, so that both see
/// one snapshot (see the module's docs).
const PG_HORIZON: &str = "WITH snapshot AS MATERIALIZED (SELECT pg_current_snapshot() AS s), \
     locks AS MATERIALIZED ( \
       SELECT virtualtransaction, locktype, transactionid, classid, objid, objsubid, database \
       FROM pg_locks WHERE granted \
         AND (locktype = 'transactionid' AND mode = 'ExclusiveLock' OR locktype = 'advisory')), \
     others AS ( \
       SELECT own.transactionid::text::bigint AS low FROM locks own \
       WHERE own.locktype = 'transactionid' \
         AND NOT EXISTS ( \
           SELECT 1 FROM locks appender \
           WHERE appender.virtualtransaction = own.virtualtransaction \
             AND appender.locktype = 'advisory' \
             AND appender.classid = 0 AND appender.objid = 4675404 AND appender.objsubid = 1 \
             AND appender.database = \
                 (SELECT oid FROM pg_database WHERE datname = current_database()))) \
     SELECT LEAST( \
       (SELECT pg_snapshot_xmax(s)::text::bigint FROM snapshot), \
       (SELECT min(running.id) FROM ( \
          SELECT pg_snapshot_xip(s)::text::bigint AS id FROM snapshot) running \
        WHERE (running.id & 4294967295) NOT IN (SELECT low FROM others))) AS horizon";

/// The tail query: `$1` and `$2` the cursor (its transaction id as text, its position), `$3`
/// the limit; with `by_tenant`, the tenant as `$4`. On PostgreSQL the horizon
/// ([`PG_HORIZON`]) is read by the same statement, from the snapshot the tail reads, and
/// `ORDER BY` names the table's columns: the bare name would be the selected
/// `transaction_id::text::bigint` alias, which no index orders, and every batch would sort
/// the rest of the log. SQLite has one writer and orders by position alone (its
/// statements leave the transaction id, `$1`, unused, as they may).
fn tail_sql(backend: Backend, by_tenant: bool, columns: &str) -> String {
    let tenant = if by_tenant { "AND tenant_id = $4" } else { "" };
    match backend {
        Backend::Postgres => format!(
            "SELECT {columns} FROM events \
             WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
               AND transaction_id < ({PG_HORIZON})::text::xid8 {tenant} \
             ORDER BY events.transaction_id, events.global_position \
             LIMIT $3"
        ),
        Backend::Sqlite => format!(
            "SELECT {columns} FROM events WHERE global_position > $2 {tenant} \
             ORDER BY global_position LIMIT $3"
        ),
    }
}

/// [`tail_sql`] with its values. On PostgreSQL the statement is planned with the actual
/// cursor each time: a cached generic plan does not know how far along the log the cursor is
/// and may scan and sort the whole table. SQLite's plan is the same for every cursor, and its
/// statement is prepared once.
fn tail_statement<'q>(
    sql: &'q str,
    backend: Backend,
    after: Cursor,
    limit: usize,
    tenant_id: Option<&'q str>,
) -> Statement<'q> {
    let mut statement = Statement::new(sql)
        .persistent(backend == Backend::Sqlite)
        .bind(after.transaction_id.to_string())
        .bind(after.position)
        .bind(limit as i64);
    if let Some(tenant_id) = tenant_id {
        statement.push(tenant_id);
    }
    statement
}

/// The columns of [`RecordedEvent`] as each backend selects them.
fn columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => PG_COLUMNS,
        Backend::Sqlite => SQLITE_COLUMNS,
    }
}

/// [`columns`], with a JSON `null` for each event's metadata.
fn columns_without_metadata(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => pg_columns!("'null'::jsonb AS metadata"),
        Backend::Sqlite => sqlite_columns!("'null' AS metadata"),
    }
}

/// One row of `events` about to be inserted.
struct Stored<'a> {
    event_id: Uuid,
    tenant_id: &'a str,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    event_type: &'a str,
    event_version: &'a str,
    payload: &'a Value,
    metadata: &'a Value,
    recorded_at: DateTime<Utc>,
}

/// Inserts `rows` in the order given, [`INSERT_CHUNK`] to a statement, and on PostgreSQL
/// announces them on [`NOTIFY_CHANNEL`] in the same statement (delivered at the commit; one
/// notification however many statements, as PostgreSQL folds a transaction's identical ones).
/// Returns the cursor (transaction id and position) each event id was given; `None`, with
/// nothing inserted, when a stream of `reads` is at another version (checked in the first
/// statement).
async fn insert_rows<'a>(
    tx: &mut Tx,
    rows: impl Iterator<Item = Stored<'a>>,
    reads: &[(StreamId, u64)],
) -> Result<Option<HashMap<Uuid, (i64, i64), crate::FastHasher>>, sqlx::Error> {
    let rows: Vec<Stored<'a>> = rows.collect();
    let mut written: HashMap<Uuid, (i64, i64), crate::FastHasher> =
        HashMap::with_capacity_and_hasher(rows.len(), crate::FastHasher::default());
    let backend = tx.backend();
    static TEXTS: Texts = Texts::new(INSERT_CHUNK);
    static CHECKED: Texts = Texts::new(INSERT_CHUNK);
    // Each distinct read once, as `[tenant, type, id, version]` rows of one JSON parameter:
    // one statement text whatever the number of reads.
    let mut check = (!reads.is_empty()).then(|| {
        let mut seen = HashSet::with_capacity_and_hasher(reads.len(), crate::FastHasher::default());
        Json(
            reads
                .iter()
                .filter(|read| seen.insert(*read))
                .map(|(stream, version)| {
                    (
                        stream.tenant_id.as_str(),
                        stream.aggregate_type.as_str(),
                        stream.aggregate_id.as_str(),
                        *version as i64,
                    )
                })
                .collect::<Vec<_>>(),
        )
    });
    for chunk in rows.chunks(INSERT_CHUNK) {
        let checked = check.take();
        let is_checked = checked.is_some();
        let texts = if is_checked { &CHECKED } else { &TEXTS };
        let sql = texts.get(backend, chunk.len(), || {
            insert_sql(chunk.len(), backend, is_checked)
        });
        let mut insert = Statement::new(&sql).persistent(texts.recurs(chunk.len()));
        for row in chunk {
            insert.push(row.event_id);
            insert.push(row.tenant_id);
            insert.push(row.aggregate_type);
            insert.push(row.aggregate_id);
            insert.push(row.sequence);
            insert.push(row.event_type);
            insert.push(row.event_version);
            insert.push(Json(row.payload));
            insert.push(Json(row.metadata));
            insert.push(row.recorded_at);
        }
        if let Some(reads) = checked {
            insert.push(reads);
        }
        let ids = tx.fetch_all_as::<(Uuid, i64, i64)>(insert).await?;
        if is_checked && ids.is_empty() {
            // Every row of an insert comes back: none means a read had moved.
            return Ok(None);
        }
        written.extend(ids.into_iter().map(|(id, tx, pos)| (id, (tx, pos))));
    }
    Ok(Some(written))
}

/// The events insert of `rows` rows; `checked`: only when no stream of the reads bound last
/// (a JSON array of `[tenant, type, id, version]`) is at another version.
fn insert_sql(rows: usize, backend: Backend, checked: bool) -> String {
    const INSERT: &str = "INSERT INTO events (event_id, tenant_id, aggregate_type, \
         aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at) ";
    const TYPES: [&str; 10] = [
        "uuid",
        "text",
        "text",
        "text",
        "int8",
        "text",
        "text",
        "jsonb",
        "jsonb",
        "timestamptz",
    ];
    // A values scan under a one-time filter keeps the rows' order, as `VALUES` alone does.
    let rows_sql = if checked {
        let reads = match backend {
            Backend::Postgres => format!(
                "SELECT r->>0, r->>1, r->>2, (r->>3)::int8 FROM jsonb_array_elements(${}::jsonb) r",
                rows * TYPES.len() + 1
            ),
            Backend::Sqlite => {
                "SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(?)".to_string()
            }
        };
        format!(
            "SELECT * FROM (VALUES {}) AS new_rows WHERE NOT EXISTS \
             (WITH read (t, a, i, v) AS ({reads}) {MOVED_READS})",
            backend.typed_values(rows, &TYPES),
        )
    } else {
        format!("VALUES {}", backend.values(rows, TYPES.len()))
    };
    match backend {
        // The announcement rides in the insert's round trip: a CTE of its own, materialized so
        // that it runs once, joined so that it runs at all.
        Backend::Postgres => format!(
            "WITH inserted AS ({INSERT}{rows_sql} RETURNING event_id, \
             transaction_id::text::bigint AS transaction_id, global_position), \
             announced AS MATERIALIZED (SELECT pg_notify('{NOTIFY_CHANNEL}', '')) \
             SELECT event_id, transaction_id, global_position FROM inserted, announced"
        ),
        Backend::Sqlite => {
            format!("{INSERT}{rows_sql} RETURNING event_id, 0 AS transaction_id, global_position")
        }
    }
}

#[cfg(test)]
mod tests {
    /// The horizon must see a transaction's id lock and its appender lock at one instant:
    /// two reads of `pg_locks` in one statement can disagree (see [`super::PG_HORIZON`]).
    #[test]
    fn the_horizon_reads_the_lock_table_once() {
        assert_eq!(super::PG_HORIZON.matches("pg_locks").count(), 1);
        assert!(super::PG_HORIZON.contains("locks AS MATERIALIZED"));
    }
}
