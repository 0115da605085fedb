//! Moving the log between databases: an export is the log as newline-delimited JSON, which an
//! import loads into another database of either backend (the upgrade from SQLite to
//! PostgreSQL, and backup and restore).
//!
//! The file, one JSON object a line, each with its `kind`:
//! 1. `header`: the format and its version, the source backend, and the cursor the export
//!    starts after (the start of the log for a whole-log export).
//! 2. `event`, in cursor order: every column of the `events` row as stored (not upcast, and
//!    with the payload fields that never leave the gateway, such as a key's hash, so that
//!    credentials keep working): id, stream, sequence, type, version, payload, metadata, time,
//!    and the source's cursor.
//! 3. `idempotency`: every completed idempotency record, so that a client retrying a request
//!    after the move gets the stored response instead of a second write.
//! 4. `end`: how many events and records the file holds and the last event's cursor. A file
//!    without it is truncated, and is refused.
//!
//! An import runs in one transaction: all of the file or nothing. A file that starts at the
//! beginning of the log goes into an empty database; one that starts later (an incremental
//! backup, `--from` the last one's `lastCursor`) must continue the log it is loaded into: each
//! stream goes on from the version it has there, without a gap. Every line is checked before
//! it is written (names, sequences, sizes, nesting); event ids stay unique.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::cursor::Cursor;
use crate::db::Tx;
use crate::json::parse_deep;
use crate::sql::Statement;
use crate::store::{AppendError, RecordedEvent, Store};

/// The `format` of the header line.
pub const FORMAT: &str = "gateway-log";
/// The version of the file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The longest line an import reads (an event's payload is far smaller: request bodies are
/// capped well below this).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Events written per statement group during an import.
const IMPORT_BATCH: usize = 500;
/// Idempotency records read per page during an export.
const RECORD_PAGE: i64 = 1_000;
/// The longest name (aggregate type, id, event type, version, idempotency key or scope) an
/// import accepts.
const MAX_NAME_CHARS: usize = 1_024;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Line {
    Header(Header),
    Event(ExportedEvent),
    Idempotency(ExportedRecord),
    End(End),
}

impl Line {
    /// Reads a line of JSON (already parsed, see [`parse_deep`]) by its `kind`.
    pub fn from_value(value: Value) -> Result<Self, String> {
        let Value::Object(mut fields) = value else {
            return Err("a line must be a JSON object".to_string());
        };
        let kind = fields.remove("kind");
        let rest = Value::Object(fields);
        let parsed = match kind.as_ref().and_then(Value::as_str) {
            Some("header") => serde_json::from_value(rest).map(Line::Header),
            Some("event") => serde_json::from_value(rest).map(Line::Event),
            Some("idempotency") => serde_json::from_value(rest).map(Line::Idempotency),
            Some("end") => serde_json::from_value(rest).map(Line::End),
            _ => {
                return Err("kind must be one of header, event, idempotency and end".to_string());
            }
        };
        parsed.map_err(|error| error.to_string())
    }
}

/// The first line: what the file is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub backend: String,
    /// The export holds the events after this cursor of the source (all of them after
    /// [`Cursor::START`]).
    pub from: String,
    pub exported_at: DateTime<Utc>,
}

/// The last line: what the file holds, so that a truncated file is told from a whole one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct End {
    pub events: u64,
    pub idempotency_records: u64,
    /// The source's cursor of the last event (or `from` when there is none): the `--from` of
    /// the next incremental export.
    pub last_cursor: String,
}

/// An `events` row as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportedEvent {
    pub cursor: String,
    pub event_id: Uuid,
    pub tenant_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub payload: Value,
    pub metadata: Value,
}

impl From<RecordedEvent> for ExportedEvent {
    fn from(event: RecordedEvent) -> Self {
        Self {
            cursor: event.cursor.to_string(),
            event_id: event.event_id,
            tenant_id: event.tenant_id,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            recorded_at: event.recorded_at,
            payload: Arc::unwrap_or_clone(event.payload),
            metadata: Arc::unwrap_or_clone(event.metadata),
        }
    }
}

/// A completed idempotency record as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportedRecord {
    pub tenant_id: String,
    pub scope: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The response body, base64.
    pub body: String,
    pub locked_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// Why an export or import stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a valid export, or does not fit the database: nothing was written.
    #[error("line {line}: {reason}")]
    Invalid { line: u64, reason: String },
    #[error("line {line}: {source}")]
    Append {
        line: u64,
        #[source]
        source: AppendError,
    },
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub events: u64,
    pub idempotency_records: u64,
    /// The source's cursor of the last event exported (`from` when none was).
    pub last_cursor: Cursor,
}

/// Writes the log after `from`, up to the head when the export starts, then the completed
/// idempotency records, as [`Line`]s to `write`. `progress` is told the events written so far
/// and how many there are.
///
/// The records are read after the events: a record whose events are in the export is always
/// in it (a record commits with its events); one whose events came after the head may be
/// too, and its events are in the next incremental export.
pub async fn export(
    store: &Store,
    from: Cursor,
    batch_size: usize,
    mut write: impl FnMut(&Line) -> std::io::Result<()>,
    mut progress: impl FnMut(u64, u64),
) -> Result<ExportSummary, TransferError> {
    let head = store.head().await?;
    let (total, _) = store.backlog(from).await?;
    write(&Line::Header(Header {
        format: FORMAT.to_string(),
        version: FORMAT_VERSION,
        backend: store.db().backend().as_str().to_string(),
        from: from.to_string(),
        exported_at: Utc::now(),
    }))?;
    let mut summary = ExportSummary {
        events: 0,
        idempotency_records: 0,
        last_cursor: from,
    };
    if head > from {
        'log: loop {
            let batch = store
                .read_stored_after(summary.last_cursor, batch_size.max(1))
                .await?;
            if batch.is_empty() {
                break;
            }
            for event in batch {
                if event.cursor > head {
                    break 'log;
                }
                summary.last_cursor = event.cursor;
                summary.events += 1;
                write(&Line::Event(event.into()))?;
            }
            progress(summary.events, total.max(summary.events));
        }
    }
    progress(summary.events, summary.events);

    let mut after = (String::new(), String::new(), String::new());
    loop {
        let rows = store
            .db()
            .fetch_all(
                Statement::new(
                    "SELECT tenant_id, scope, idempotency_key, request_hash, status_code, \
                     response_headers, response_body, locked_until, created_at \
                     FROM idempotency_records WHERE state = 'completed' \
                     AND (tenant_id, scope, idempotency_key) > ($1, $2, $3) \
                     ORDER BY tenant_id, scope, idempotency_key LIMIT $4",
                )
                .bind(after.0.clone())
                .bind(after.1.clone())
                .bind(after.2.clone())
                .bind(RECORD_PAGE),
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = (
            last.try_get("tenant_id")?,
            last.try_get("scope")?,
            last.try_get("idempotency_key")?,
        );
        for row in &rows {
            let status: i32 = row.try_get("status_code")?;
            let headers: sqlx::types::Json<Vec<(String, String)>> =
                row.try_get("response_headers")?;
            let body: Vec<u8> = row.try_get("response_body")?;
            write(&Line::Idempotency(ExportedRecord {
                tenant_id: row.try_get("tenant_id")?,
                scope: row.try_get("scope")?,
                idempotency_key: row.try_get("idempotency_key")?,
                request_hash: row.try_get("request_hash")?,
                status: u16::try_from(status).unwrap_or(500),
                headers: headers.0,
                body: BASE64.encode(body),
                locked_until: row.try_get("locked_until")?,
                created_at: row.try_get("created_at")?,
            }))?;
            summary.idempotency_records += 1;
        }
    }
    write(&Line::End(End {
        events: summary.events,
        idempotency_records: summary.idempotency_records,
        last_cursor: summary.last_cursor.to_string(),
    }))?;
    Ok(summary)
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    pub events: u64,
    pub idempotency_records: u64,
    /// This database's cursor of the last event imported (`None` when the file held none).
    pub last_cursor: Option<Cursor>,
}

/// Loads an export, line by line, in one transaction (see the module's docs). Feed it every
/// line with [`Importer::line`], then [`Importer::finish`] and commit the transaction it
/// returns.
pub struct Importer<'s> {
    store: &'s Store,
    tx: Tx,
    line: u64,
    header: Option<Cursor>,
    ended: bool,
    /// Whether the database held no event when the import began.
    empty: bool,
    /// The last sequence of each stream the file has touched.
    versions: HashMap<(String, String, String), i64>,
    pending: Vec<RecordedEvent>,
    source_last: Option<String>,
    summary: ImportSummary,
}

impl<'s> Importer<'s> {
    /// Begins the import's transaction.
    pub async fn begin(store: &'s Store) -> Result<Self, TransferError> {
        let mut tx = store.db().begin().await?;
        let any = tx
            .fetch_optional(Statement::new("SELECT 1 FROM events LIMIT 1"))
            .await?;
        Ok(Self {
            store,
            tx,
            line: 0,
            header: None,
            ended: false,
            empty: any.is_none(),
            versions: HashMap::new(),
            pending: Vec::new(),
            source_last: None,
            summary: ImportSummary {
                events: 0,
                idempotency_records: 0,
                last_cursor: None,
            },
        })
    }

    /// Events read so far.
    pub fn events(&self) -> u64 {
        self.summary.events + self.pending.len() as u64
    }

    fn invalid(&self, reason: impl Into<String>) -> TransferError {
        TransferError::Invalid {
            line: self.line,
            reason: reason.into(),
        }
    }

    /// Reads one line of the file (its bytes, with or without the newline).
    pub async fn line(&mut self, bytes: &[u8]) -> Result<(), TransferError> {
        self.line += 1;
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if self.ended {
            return Err(self.invalid("text after the end line"));
        }
        let value =
            parse_deep(bytes).map_err(|error| self.invalid(format!("not JSON: {error}")))?;
        let line = Line::from_value(value)
            .map_err(|error| self.invalid(format!("not a line of an export: {error}")))?;
        match (line, self.header) {
            (
                Line::Header(Header {
                    format,
                    version,
                    from,
                    ..
                }),
                None,
            ) => {
                if format != FORMAT || version != FORMAT_VERSION {
                    return Err(self.invalid(format!(
                        "format {format:?} version {version}; this build reads {FORMAT:?} \
                         version {FORMAT_VERSION}"
                    )));
                }
                let from: Cursor = from
                    .parse()
                    .map_err(|_| self.invalid(format!("from {from:?} is not a cursor")))?;
                if from == Cursor::START && !self.empty {
                    return Err(self.invalid(
                        "the file holds the whole log and the database already has events: \
                         import it into an empty database",
                    ));
                }
                self.header = Some(from);
                Ok(())
            }
            (_, None) => Err(self.invalid("the file does not start with a header line")),
            (Line::Header(_), Some(_)) => Err(self.invalid("a second header line")),
            (Line::Event(event), Some(_)) => self.event(event).await,
            (Line::Idempotency(record), Some(_)) => self.record(record).await,
            (
                Line::End(End {
                    events,
                    idempotency_records,
                    last_cursor,
                }),
                Some(from),
            ) => {
                self.flush().await?;
                let expected_last = self.source_last.clone().unwrap_or_else(|| from.to_string());
                if events != self.summary.events
                    || idempotency_records != self.summary.idempotency_records
                    || last_cursor != expected_last
                {
                    return Err(self.invalid(format!(
                        "the end line counts {events} events and {idempotency_records} records \
                         up to {last_cursor}; the file holds {} and {} up to {expected_last}",
                        self.summary.events, self.summary.idempotency_records
                    )));
                }
                self.ended = true;
                Ok(())
            }
        }
    }

    async fn event(&mut self, event: ExportedEvent) -> Result<(), TransferError> {
        domain::names::TenantId::parse(event.tenant_id.as_str())
            .map_err(|error| self.invalid(format!("tenant id: {error}")))?;
        for (what, name) in [
            ("aggregate type", &event.aggregate_type),
            ("aggregate id", &event.aggregate_id),
            ("event type", &event.event_type),
            ("event version", &event.event_version),
        ] {
            check_name(what, name).map_err(|reason| self.invalid(reason))?;
        }
        if !event.metadata.is_object() {
            return Err(self.invalid("metadata must be an object"));
        }
        if self.summary.idempotency_records > 0 {
            return Err(self.invalid("an event after the idempotency records"));
        }
        let cursor: Cursor = event
            .cursor
            .parse()
            .map_err(|_| self.invalid(format!("cursor {:?} is not a cursor", event.cursor)))?;
        let stream = (
            event.tenant_id.clone(),
            event.aggregate_type.clone(),
            event.aggregate_id.clone(),
        );
        let previous = match self.versions.get(&stream) {
            Some(version) => *version,
            None if self.empty => 0,
            None => self.stored_version(&stream).await?,
        };
        if event.sequence != previous + 1 {
            return Err(self.invalid(format!(
                "stream {}/{}/{} is at version {previous} and the event has sequence {}",
                stream.0, stream.1, stream.2, event.sequence
            )));
        }
        self.versions.insert(stream, event.sequence);
        self.source_last = Some(event.cursor.clone());
        self.pending.push(RecordedEvent {
            cursor,
            event_id: event.event_id,
            tenant_id: event.tenant_id,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: Arc::new(event.payload),
            metadata: Arc::new(event.metadata),
            recorded_at: event.recorded_at,
        });
        if self.pending.len() >= IMPORT_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn stored_version(
        &mut self,
        stream: &(String, String, String),
    ) -> Result<i64, TransferError> {
        let row = self
            .tx
            .fetch_optional(
                Statement::new(
                    "SELECT max(sequence) AS version FROM events \
                     WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3",
                )
                .bind(stream.0.as_str())
                .bind(stream.1.as_str())
                .bind(stream.2.as_str()),
            )
            .await?;
        let version: Option<i64> = match row {
            Some(row) => row.try_get("version")?,
            None => None,
        };
        Ok(version.unwrap_or(0))
    }

    async fn flush(&mut self) -> Result<(), TransferError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.pending);
        let count = events.len() as u64;
        let written = self
            .store
            .import_in(&mut self.tx, events)
            .await
            .map_err(|source| match source {
                AppendError::Conflict { .. } => self.invalid(
                    "an event id or stream position of the file is already in the database",
                ),
                source => TransferError::Append {
                    line: self.line,
                    source,
                },
            })?;
        self.summary.events += count;
        if let Some(last) = written.last() {
            self.summary.last_cursor = Some(last.cursor);
        }
        Ok(())
    }

    async fn record(&mut self, record: ExportedRecord) -> Result<(), TransferError> {
        self.flush().await?;
        domain::names::TenantId::parse(record.tenant_id.as_str())
            .map_err(|error| self.invalid(format!("tenant id: {error}")))?;
        check_name("idempotency key", &record.idempotency_key)
            .map_err(|reason| self.invalid(reason))?;
        if record.scope.chars().count() > MAX_NAME_CHARS {
            return Err(self.invalid("scope is too long"));
        }
        check_name("request hash", &record.request_hash).map_err(|reason| self.invalid(reason))?;
        if !(100..=599).contains(&record.status) {
            return Err(self.invalid(format!("status {} is not an HTTP status", record.status)));
        }
        let body = BASE64
            .decode(record.body.as_bytes())
            .map_err(|error| self.invalid(format!("body is not base64: {error}")))?;
        // A record the database already has (an incremental backup holds every record of its
        // time) keeps the row it has.
        self.tx
            .execute(
                Statement::new(
                    "INSERT INTO idempotency_records (tenant_id, scope, idempotency_key, \
                     request_hash, state, status_code, response_headers, response_body, \
                     locked_until, created_at) \
                     VALUES ($1, $2, $3, $4, 'completed', $5, $6, $7, $8, $9) \
                     ON CONFLICT (tenant_id, scope, idempotency_key) DO NOTHING",
                )
                .bind(record.tenant_id.as_str())
                .bind(record.scope.as_str())
                .bind(record.idempotency_key.as_str())
                .bind(record.request_hash.as_str())
                .bind(i32::from(record.status))
                .bind(sqlx::types::Json(&record.headers))
                .bind(body.as_slice())
                .bind(record.locked_until)
                .bind(record.created_at),
            )
            .await?;
        self.summary.idempotency_records += 1;
        Ok(())
    }

    /// Checks that the file ended with its end line and returns the import's transaction,
    /// not yet committed (the caller may add to it), with what it wrote.
    pub async fn finish(mut self) -> Result<(Tx, ImportSummary), TransferError> {
        if !self.ended {
            self.line += 1;
            return Err(self.invalid(if self.header.is_none() {
                "the file is empty".to_string()
            } else {
                "the file ends without its end line (truncated?)".to_string()
            }));
        }
        self.flush().await?;
        Ok((self.tx, self.summary))
    }
}

/// A name of the file: 1 to [`MAX_NAME_CHARS`] characters, no control characters.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("{what} is longer than {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    Ok(())
}
