//! Read models of conversations, all built from `Session*` events:
//! - `sessions`: one row per session, with its status, message count and last activity;
//! - `transcripts` (table `transcript_messages`): every user and assistant message in order,
//!   with provider and usage on assistant messages;
//! - `provider_calls`: every provider call, successful or not (seed 004's provider-call log).
//!
//! Rows are keyed by the event's place in its session's stream, so applying an event twice
//! changes nothing, and timestamps come from the events, so a rebuild reproduces every row.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::session::{Session, SessionEvent, SessionStatus};
use eventlog::sql::Texts;
use eventlog::{Db, RecordedEvent, Statement, Tx};
use serde_json::{Map, Value};
use sqlx::types::Json;

use crate::{ProjectionError, Projector, RecordedReply, Target};

pub const SESSIONS: &str = "sessions";
pub const TRANSCRIPTS: &str = "transcripts";
pub const PROVIDER_CALLS: &str = "provider_calls";

fn session_events(events: &[Arc<RecordedEvent>]) -> impl Iterator<Item = &RecordedEvent> {
    events
        .iter()
        .map(|e| &**e)
        .filter(|e| e.aggregate_type == Session::TYPE)
}

/// Builds `sessions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionsProjector;

#[async_trait]
impl Projector for SessionsProjector {
    fn name(&self) -> &'static str {
        SESSIONS
    }

    fn tables(&self) -> &'static [&'static str] {
        &["sessions"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Session::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("sessions");
        let insert = format!(
            "INSERT INTO {table} (tenant_id, id, agent_id, customer_id, metadata, status, \
             message_count, version, created_at, last_activity_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', 0, $6, $7, $7) \
             ON CONFLICT (tenant_id, id) DO NOTHING"
        );
        let close = format!(
            "UPDATE {table} SET status = $3, closed_at = $4, version = $5 \
             WHERE tenant_id = $1 AND id = $2 AND version < $5"
        );
        // Messages and provider calls only move a session's counters: they are summed per
        // session and written in one update for all, before the batch's next creation or
        // closing (so every session's events still apply in log order).
        let mut moved: BTreeMap<(&str, &str), Progress> = BTreeMap::new();
        for event in session_events(events) {
            let tenant = event.tenant_id.as_str();
            let session = event.aggregate_id.as_str();
            let (version, at) = (event.sequence, event.recorded_at);
            // Messages and provider calls are counted by their type, without being decoded.
            let (counted, message) = match event.event_type.as_str() {
                SessionEvent::USER_MESSAGE_RECORDED | SessionEvent::ASSISTANT_MESSAGE_RECORDED => {
                    (true, true)
                }
                SessionEvent::PROVIDER_CALL_ATTEMPTED | SessionEvent::MESSAGE_FAILED => {
                    (true, false)
                }
                _ => (false, false),
            };
            if counted {
                let entry = moved.entry((tenant, session)).or_default();
                entry.version = version;
                if message {
                    entry.messages += 1;
                    entry.last_activity = Some(at);
                }
                continue;
            }
            let decoded: SessionEvent = crate::decode(event)?;
            write_progress(tx, target, &mut moved).await?;
            let query = match &decoded {
                SessionEvent::SessionCreated {
                    agent_id,
                    customer_id,
                    metadata,
                    ..
                } => Statement::new(&insert)
                    .bind(tenant)
                    .bind(session)
                    .bind(agent_id.as_str())
                    .bind(customer_id.as_deref())
                    .bind(Json(metadata))
                    .bind(version)
                    .bind(at),
                SessionEvent::SessionClosed { .. } => Statement::new(&close)
                    .bind(tenant)
                    .bind(session)
                    .bind(SessionStatus::Closed.as_str())
                    .bind(at)
                    .bind(version),
                // An event decodes as the variant its recorded type names: counted above.
                _ => unreachable!("counted above by their type"),
            };
            tx.execute(query).await?;
        }
        write_progress(tx, target, &mut moved).await?;
        Ok(())
    }
}

/// What a session's messages and provider calls in a batch change on its row.
#[derive(Debug, Default)]
struct Progress {
    messages: i64,
    last_activity: Option<DateTime<Utc>>,
    /// The last event's sequence.
    version: i64,
}

/// Most sessions moved in one statement of [`write_progress`].
const PROGRESS_CHUNK: usize = 500;

/// Writes (and empties) `moved`: one update for up to [`PROGRESS_CHUNK`] sessions, each row
/// moved only when the change is newer than its version.
async fn write_progress(
    tx: &mut Tx,
    target: Target,
    moved: &mut BTreeMap<(&str, &str), Progress>,
) -> Result<(), ProjectionError> {
    static TEXTS: Texts = Texts::new(PROGRESS_CHUNK);
    let moved: Vec<_> = std::mem::take(moved).into_iter().collect();
    for chunk in moved.chunks(PROGRESS_CHUNK) {
        // A `VALUES` list's columns are `column1`, `column2`… on both backends.
        let sql = crate::rows_text(&TEXTS, tx, target, chunk.len(), || {
            format!(
                "UPDATE {} AS s SET message_count = s.message_count + v.column3, \
                 last_activity_at = coalesce(v.column4, s.last_activity_at), \
                 version = v.column5 \
                 FROM (VALUES {}) AS v \
                 WHERE s.tenant_id = v.column1 AND s.id = v.column2 AND s.version < v.column5",
                target.table("sessions"),
                tx.backend().typed_values(
                    chunk.len(),
                    &["text", "text", "int8", "timestamptz", "int8"]
                )
            )
        });
        let mut update = Statement::new(&sql);
        for ((tenant, session), change) in chunk {
            update = update
                .bind(*tenant)
                .bind(*session)
                .bind(change.messages)
                .bind(change.last_activity)
                .bind(change.version);
        }
        tx.execute(update).await?;
    }
    Ok(())
}

/// One session as the read model holds it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SessionRecord {
    pub id: String,
    pub agent_id: String,
    pub customer_id: Option<String>,
    #[sqlx(json)]
    pub metadata: Map<String, Value>,
    pub status: String,
    pub message_count: i64,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

const SESSION_COLUMNS: &str = "id, agent_id, customer_id, metadata, status, message_count, \
     created_at, last_activity_at, closed_at";

pub async fn get(db: &Db, tenant_id: &str, id: &str) -> Result<Option<SessionRecord>, sqlx::Error> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = $1 AND id = $2");
    db.fetch_optional_as::<SessionRecord>(Statement::new(&sql).bind(tenant_id).bind(id))
        .await
}

/// Filters of a session list; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub agent_id: Option<String>,
    pub customer_id: Option<String>,
    pub status: Option<SessionStatus>,
}

/// A page of the tenant's sessions ordered by id (creation order), after `after`.
pub async fn list(
    db: &Db,
    tenant_id: &str,
    filter: &SessionFilter,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<SessionRecord>, sqlx::Error> {
    // Conditions are appended with numbered parameters only; no value is spliced into SQL.
    let mut values: Vec<&str> = vec![tenant_id, after.unwrap_or("")];
    let mut conditions = String::new();
    for (column, value) in [
        ("agent_id", filter.agent_id.as_deref()),
        ("customer_id", filter.customer_id.as_deref()),
        ("status", filter.status.map(SessionStatus::as_str)),
    ] {
        if let Some(value) = value {
            values.push(value);
            conditions.push_str(&format!(" AND {column} = ${}", values.len()));
        }
    }
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = $1 AND id > $2{conditions} \
         ORDER BY id LIMIT {limit}"
    );
    let mut query = Statement::new(&sql);
    for value in &values {
        query = query.bind(*value);
    }
    let rows = db.fetch_all(query).await?;
    rows.iter()
        .map(|row| row.decode::<SessionRecord>())
        .collect()
}

/// Builds `transcript_messages`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TranscriptsProjector;

#[async_trait]
impl Projector for TranscriptsProjector {
    fn name(&self) -> &'static str {
        TRANSCRIPTS
    }

    fn tables(&self) -> &'static [&'static str] {
        &["transcript_messages"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Session::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("transcript_messages");
        let mut rows = Vec::new();
        for event in session_events(events) {
            let line = match event.event_type.as_str() {
                SessionEvent::USER_MESSAGE_RECORDED => TranscriptLine::user(event)?,
                SessionEvent::ASSISTANT_MESSAGE_RECORDED => TranscriptLine::assistant(event)?,
                _ => continue,
            };
            rows.push((event, line));
        }
        // One statement per chunk of messages.
        static INSERT: Texts = Texts::new(INSERT_CHUNK);
        for chunk in rows.chunks(INSERT_CHUNK) {
            let sql = crate::rows_text(&INSERT, tx, target, chunk.len(), || {
                format!(
                    "INSERT INTO {table} (tenant_id, session_id, sequence, id, role, content, \
                     reply_to, provider, model, usage, created_at) VALUES {} \
                     ON CONFLICT (tenant_id, session_id, sequence) DO NOTHING",
                    tx.backend().values(chunk.len(), 11)
                )
            });
            let mut query =
                Statement::new(&sql).persistent(eventlog::sql::recurs(chunk.len(), INSERT_CHUNK));
            for (event, line) in chunk {
                let reply = line.reply();
                query = query
                    .bind(event.tenant_id.as_str())
                    .bind(event.aggregate_id.as_str())
                    .bind(event.sequence)
                    .bind(line.message_id())
                    .bind(if reply.is_some() { "assistant" } else { "user" })
                    .bind(line.content())
                    .bind(reply.map(|reply| reply.reply_to))
                    .bind(reply.map(|reply| reply.provider))
                    .bind(reply.map(|reply| reply.model))
                    .bind(reply.map(|reply| Json(reply.usage())))
                    .bind(event.recorded_at);
            }
            tx.execute(query).await?;
        }
        Ok(())
    }
}

/// What a transcript row takes of a `UserMessageRecorded` or `AssistantMessageRecorded`
/// payload, borrowed from it rather than decoded into the domain event. The payloads are flat
/// ([`domain::session::AssistantReply`] is flattened into
/// [`SessionEvent::AssistantMessageRecorded`]), so the names are the domain's (pinned by a
/// test).
enum TranscriptLine<'a> {
    User(UserLine<'a>),
    Assistant(RecordedReply<'a>),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserLine<'a> {
    message_id: &'a str,
    content: &'a str,
}

impl<'a> TranscriptLine<'a> {
    fn user(event: &'a RecordedEvent) -> Result<Self, ProjectionError> {
        crate::read(event).map(Self::User)
    }

    fn assistant(event: &'a RecordedEvent) -> Result<Self, ProjectionError> {
        crate::read(event).map(Self::Assistant)
    }

    fn message_id(&self) -> &'a str {
        match self {
            Self::User(line) => line.message_id,
            Self::Assistant(line) => line.message_id,
        }
    }

    fn content(&self) -> &'a str {
        match self {
            Self::User(line) => line.content,
            Self::Assistant(line) => line.content,
        }
    }

    fn reply(&self) -> Option<&RecordedReply<'a>> {
        match self {
            Self::User(_) => None,
            Self::Assistant(line) => Some(line),
        }
    }
}

impl RecordedReply<'_> {
    /// The `usage` column of the reply's transcript row.
    fn usage(&self) -> ReplyUsage {
        ReplyUsage {
            client_disconnected: self.client_disconnected,
            cost_micros: self.cost_micros,
            fallback_used: self.fallback_used,
            incomplete: self.incomplete,
            price_micro_usd_per_1k_tokens: self.price.micro_usd_per_1k_tokens,
            streamed: self.streamed,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
        }
    }
}

/// The `usage` column of an assistant's row. The fields are in the order of their names, so
/// that the document's bytes are those of a sorted JSON object, as every row before had them.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplyUsage {
    client_disconnected: bool,
    cost_micros: u64,
    fallback_used: bool,
    incomplete: bool,
    #[serde(rename = "priceMicroUsdPer1kTokens")]
    price_micro_usd_per_1k_tokens: u64,
    streamed: bool,
    tokens_in: u64,
    tokens_out: u64,
}

/// Most rows in one insert of a projector of this module.
const INSERT_CHUNK: usize = 200;

/// One message of a transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptMessage {
    pub id: String,
    pub role: String,
    pub content: String,
    pub reply_to: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// For assistant messages: tokensIn, tokensOut, costMicros, priceMicroUsdPer1kTokens and
    /// the reply's flags.
    pub usage: Option<Value>,
    pub created_at: DateTime<Utc>,
}

/// A session's messages in order, after position `after_sequence`, at most `limit`.
pub async fn transcript(
    db: &Db,
    tenant_id: &str,
    session_id: &str,
    after_sequence: i64,
    limit: u32,
) -> Result<Vec<(i64, TranscriptMessage)>, sqlx::Error> {
    let sql = "SELECT sequence, id, role, content, reply_to, provider, model, usage, created_at \
               FROM transcript_messages WHERE tenant_id = $1 AND session_id = $2 \
               AND sequence > $3 ORDER BY sequence LIMIT $4";
    let rows = db
        .fetch_all(
            Statement::new(sql)
                .bind(tenant_id)
                .bind(session_id)
                .bind(after_sequence)
                .bind(i64::from(limit)),
        )
        .await?;
    rows.iter()
        .map(|row| {
            let usage: Option<Json<Value>> = row.try_get("usage")?;
            Ok((
                row.try_get("sequence")?,
                TranscriptMessage {
                    id: row.try_get("id")?,
                    role: row.try_get("role")?,
                    content: row.try_get("content")?,
                    reply_to: row.try_get("reply_to")?,
                    provider: row.try_get("provider")?,
                    model: row.try_get("model")?,
                    usage: usage.map(|u| u.0),
                    created_at: row.try_get("created_at")?,
                },
            ))
        })
        .collect()
}

/// Builds `provider_calls`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderCallsProjector;

#[async_trait]
impl Projector for ProviderCallsProjector {
    fn name(&self) -> &'static str {
        PROVIDER_CALLS
    }

    fn tables(&self) -> &'static [&'static str] {
        &["provider_calls"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Session::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("provider_calls");
        let mut calls = Vec::new();
        for event in
            session_events(events).filter(|e| e.event_type == SessionEvent::PROVIDER_CALL_ATTEMPTED)
        {
            let call: CallLine = crate::read(event)?;
            calls.push((event, call));
        }
        // One statement per chunk of calls.
        static INSERT: Texts = Texts::new(INSERT_CHUNK);
        for chunk in calls.chunks(INSERT_CHUNK) {
            let sql = crate::rows_text(&INSERT, tx, target, chunk.len(), || {
                format!(
                    "INSERT INTO {table} (tenant_id, session_id, sequence, message_id, provider, \
                     model, attempt, status, http_status, latency_ms, error_code, \
                     retry_after_ms, created_at) VALUES {} \
                     ON CONFLICT (tenant_id, session_id, sequence) DO NOTHING",
                    tx.backend().values(chunk.len(), 13)
                )
            });
            let mut query =
                Statement::new(&sql).persistent(eventlog::sql::recurs(chunk.len(), INSERT_CHUNK));
            for (event, call) in chunk {
                query = query
                    .bind(event.tenant_id.as_str())
                    .bind(event.aggregate_id.as_str())
                    .bind(event.sequence)
                    .bind(call.message_id)
                    .bind(call.provider)
                    .bind(call.model)
                    .bind(call.attempt as i32)
                    .bind(call.status)
                    .bind(call.http_status.map(i32::from))
                    .bind(call.latency_ms as i64)
                    .bind(call.error_code)
                    .bind(call.retry_after_ms.map(|ms| ms as i64))
                    .bind(event.recorded_at);
            }
            tx.execute(query).await?;
        }
        Ok(())
    }
}

/// What a `provider_calls` row takes of a `ProviderCallAttempted` payload, borrowed from it
/// rather than decoded into the domain event (whose attempt is flattened into it, which serde
/// reads through a buffer). The names are the domain's (pinned by a test).
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallLine<'a> {
    message_id: &'a str,
    provider: &'a str,
    #[serde(default)]
    model: Option<&'a str>,
    attempt: u32,
    status: &'a str,
    #[serde(default)]
    http_status: Option<u16>,
    latency_ms: u64,
    #[serde(default)]
    error_code: Option<&'a str>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

/// One provider call of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderCall {
    pub message_id: String,
    pub provider: String,
    pub model: Option<String>,
    pub attempt: i32,
    pub status: String,
    pub http_status: Option<i32>,
    pub latency_ms: i64,
    pub error_code: Option<String>,
    pub retry_after_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// Every provider call of a session, in order.
pub async fn provider_calls(
    db: &Db,
    tenant_id: &str,
    session_id: &str,
) -> Result<Vec<ProviderCall>, sqlx::Error> {
    let sql = "SELECT message_id, provider, model, attempt, status, http_status, latency_ms, \
               error_code, retry_after_ms, created_at FROM provider_calls \
               WHERE tenant_id = $1 AND session_id = $2 ORDER BY sequence";
    let rows = db
        .fetch_all(Statement::new(sql).bind(tenant_id).bind(session_id))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ProviderCall {
                message_id: row.try_get("message_id")?,
                provider: row.try_get("provider")?,
                model: row.try_get("model")?,
                attempt: row.try_get("attempt")?,
                status: row.try_get("status")?,
                http_status: row.try_get("http_status")?,
                latency_ms: row.try_get("latency_ms")?,
                error_code: row.try_get("error_code")?,
                retry_after_ms: row.try_get("retry_after_ms")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::session::{AssistantReply, ProviderAttempt};
    use eventlog::{Cursor, NewEvent};
    use serde_json::json;

    fn recorded(event: &SessionEvent) -> RecordedEvent {
        let new = NewEvent::from_domain(event).unwrap();
        RecordedEvent {
            cursor: Cursor::START,
            event_id: new.event_id,
            tenant_id: "acme".into(),
            aggregate_type: Session::TYPE.into(),
            aggregate_id: "sess-1".into(),
            sequence: 3,
            event_type: new.event_type,
            event_version: new.event_version,
            payload: new.payload,
            metadata: Arc::new(Value::Null),
            recorded_at: Utc::now(),
        }
    }

    /// A transcript row read in place from the recorded events holds what the domain events
    /// hold, and the usage document is the sorted object it always was.
    #[test]
    fn transcript_lines_read_in_place_as_the_domain_writes_them() {
        let user = recorded(&SessionEvent::UserMessageRecorded {
            session_id: "sess-1".into(),
            message_id: "msg_1".into(),
            content: "Grüße \"there\"\n".into(),
        });
        let line = TranscriptLine::user(&user).unwrap();
        assert_eq!(line.message_id(), "msg_1");
        assert_eq!(line.content(), "Grüße \"there\"\n");
        assert!(line.reply().is_none());

        for (streamed, incomplete) in [(false, false), (true, true)] {
            let reply: AssistantReply = serde_json::from_value(json!({
                "messageId": "msg_2", "replyTo": "msg_1", "agentId": "agent-1",
                "content": "hello", "provider": "vendorB", "model": "m-1",
                "tokensIn": 12, "tokensOut": 30, "costMicros": 1_260,
                "price": {"microUsdPer1kTokens": 30_000}, "fallbackUsed": true,
                "streamed": streamed, "clientDisconnected": streamed, "incomplete": incomplete,
            }))
            .unwrap();
            let assistant = recorded(&SessionEvent::AssistantMessageRecorded {
                session_id: "sess-1".into(),
                reply: reply.clone(),
            });
            let line = TranscriptLine::assistant(&assistant).unwrap();
            assert_eq!(line.message_id(), &*reply.message_id);
            assert_eq!(line.content(), &*reply.content);
            let answer = line.reply().unwrap();
            assert_eq!(answer.reply_to, &*reply.reply_to);
            assert_eq!(answer.provider, &*reply.provider);
            assert_eq!(answer.model, &*reply.model);
            // The document as a JSON map (sorted keys) wrote it before.
            let sorted = json!({
                "tokensIn": reply.tokens_in,
                "tokensOut": reply.tokens_out,
                "costMicros": reply.cost_micros,
                "priceMicroUsdPer1kTokens": reply.price.micro_usd_per_1k_tokens,
                "fallbackUsed": reply.fallback_used,
                "streamed": reply.streamed,
                "clientDisconnected": reply.client_disconnected,
                "incomplete": reply.incomplete,
            });
            assert_eq!(
                serde_json::to_string(&answer.usage()).unwrap(),
                serde_json::to_string(&sorted).unwrap()
            );
        }

        // A reply missing a field the domain requires is refused, not defaulted.
        let mut broken = recorded(&SessionEvent::UserMessageRecorded {
            session_id: "sess-1".into(),
            message_id: "msg_1".into(),
            content: "hi".into(),
        });
        broken.event_type = SessionEvent::ASSISTANT_MESSAGE_RECORDED.into();
        assert!(TranscriptLine::assistant(&broken).is_err());
    }

    /// A provider call read in place holds what the domain event holds, with and without
    /// its optional fields.
    #[test]
    fn provider_calls_read_in_place_as_the_domain_writes_them() {
        let attempts = [
            ProviderAttempt {
                provider: "vendorA".into(),
                model: Some("m-1".into()),
                attempt: 2,
                status: "error".into(),
                http_status: Some(429),
                latency_ms: 31,
                error_code: Some("RATE_LIMITED".into()),
                retry_after_ms: Some(1_500),
            },
            ProviderAttempt {
                provider: "vendorB".into(),
                model: None,
                attempt: 1,
                status: "success".into(),
                http_status: None,
                latency_ms: 7,
                error_code: None,
                retry_after_ms: None,
            },
        ];
        for attempt in attempts {
            let event = recorded(&SessionEvent::ProviderCallAttempted {
                session_id: "sess-1".into(),
                message_id: "msg_1".into(),
                attempt: attempt.clone(),
            });
            let call = <CallLine as serde::Deserialize>::deserialize(&*event.payload).unwrap();
            assert_eq!(
                call,
                CallLine {
                    message_id: "msg_1",
                    provider: &attempt.provider,
                    model: attempt.model.as_deref(),
                    attempt: attempt.attempt,
                    status: &attempt.status,
                    http_status: attempt.http_status,
                    latency_ms: attempt.latency_ms,
                    error_code: attempt.error_code.as_deref(),
                    retry_after_ms: attempt.retry_after_ms,
                }
            );
        }
    }
}
