//! Usage metering: one usage record per billed reply, rollups by UTC hour and day, the
//! sessions active in each hour, each month's spend for budgets, and the budgets themselves.
//!
//! - [`UsageProjector`] (`usage`): `usage_records`, `usage_hourly`, `usage_daily`,
//!   `usage_sessions`, from `AssistantMessageRecorded` events. Only billed replies are
//!   events of that type, so failed attempts never count, and a replayed request records no
//!   new event, so replays never count twice.
//! - [`SpendProjection`]: `usage_spend`, kept inline (in the transaction of the append), so
//!   that a budget check reads the spend as of the last commit.
//! - [`BudgetsProjector`] (`budgets`): `budgets`, from `Budget*` events.
//! - [`verify`]: recomputes everything from the log and compares.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use cqrs_es::Aggregate;
use domain::budget::{Budget, BudgetEvent, TENANT_SCOPE, agent_scope};
use domain::session::{Session, SessionEvent};
use eventlog::sql::Texts;
use eventlog::{
    AppendError, Backend, Cursor, Db, EventLog, InlineProjection, RecordedEvent, Statement, Tx,
};
use serde::Serialize;
use sqlx::types::Json;

use crate::{ProjectionError, Projector, Target};

pub const NAME: &str = "usage";
pub const BUDGETS: &str = "budgets";

/// One billed reply, as the usage tables see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    pub tenant_id: String,
    pub message_id: String,
    pub session_id: String,
    pub agent_id: String,
    pub provider: String,
    pub model: String,
    /// The API key id or service that sent the message.
    pub api_key: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_micros: i64,
    pub price_micros_per_1k: i64,
    pub recorded_at: DateTime<Utc>,
}

/// The usage record of an event, when it is a billed reply.
pub fn record_of(event: &RecordedEvent) -> Result<Option<UsageRecord>, ProjectionError> {
    let reply = reply_of(event).map_err(|source| ProjectionError::Decode {
        event_id: event.event_id,
        source,
    })?;
    Ok(reply.map(|(record, _)| record))
}

/// The usage record of a billed reply and the user message it answers.
fn reply_of(event: &RecordedEvent) -> Result<Option<(UsageRecord, String)>, serde_json::Error> {
    let Some(reply) = billed(event)? else {
        return Ok(None);
    };
    let record = UsageRecord {
        tenant_id: event.tenant_id.clone(),
        message_id: reply.message_id.to_owned(),
        session_id: reply.session_id.to_owned(),
        agent_id: reply.agent_id.to_owned(),
        provider: reply.provider.to_owned(),
        model: reply.model.to_owned(),
        api_key: actor_of(event).to_owned(),
        tokens_in: stored(reply.tokens_in),
        tokens_out: stored(reply.tokens_out),
        cost_micros: stored(reply.cost_micros),
        price_micros_per_1k: stored(reply.price.micro_usd_per_1k_tokens),
        recorded_at: event.recorded_at,
    };
    Ok(Some((record, reply.reply_to.to_owned())))
}

/// A billed reply, read in place from its event.
fn billed(event: &RecordedEvent) -> Result<Option<crate::RecordedReply<'_>>, serde_json::Error> {
    if event.aggregate_type != Session::TYPE
        || event.event_type != SessionEvent::ASSISTANT_MESSAGE_RECORDED
    {
        return Ok(None);
    }
    <crate::RecordedReply as serde::Deserialize>::deserialize(&*event.payload).map(Some)
}

/// The metadata as [`RecordedEvent::event_metadata`] reads it, its strings borrowed: the same
/// fields, required and optional, of the same types (a unit test compares the two).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Read to check the document's shape, as the owned metadata's are.
struct MetadataView<'a> {
    tenant_id: &'a str,
    actor: &'a str,
    request_id: &'a str,
    correlation_id: &'a str,
    #[serde(default)]
    causation_id: Option<&'a str>,
    #[serde(default)]
    idempotency_key: Option<&'a str>,
    command: &'a str,
    #[serde(default)]
    traceparent: Option<&'a str>,
    schema: u32,
}

/// Who sent the message of a reply (its API key id or service): the actor of its metadata,
/// empty when the metadata does not have the current shape.
fn actor_of(event: &RecordedEvent) -> &str {
    match <MetadataView as serde::Deserialize>::deserialize(&*event.metadata) {
        Ok(view) if domain::names::TenantId::is_valid(view.tenant_id) => view.actor,
        _ => "",
    }
}

/// A count or amount as the signed integer the tables store. The gateway bounds what it
/// writes (tokens, prices and budgets) far below `i64::MAX`; an event from elsewhere beyond it
/// is stored as `i64::MAX` rather than wrapped to a negative number.
fn stored(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The UTC hour a time falls in.
pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    // In whole seconds: chrono's `duration_trunc` counts in nanoseconds, which end in 2262
    // (beyond, it failed and the time was its own bucket).
    let seconds = at.timestamp();
    DateTime::from_timestamp(seconds - seconds.rem_euclid(3600), 0).unwrap_or(at)
}

/// The UTC day a time falls in.
pub fn day_of(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), at.day(), 0, 0, 0)
        .single()
        .unwrap_or(at)
}

/// The UTC month of a time, `YYYY-MM`: the period of budgets.
pub fn month_of(at: DateTime<Utc>) -> String {
    let year = at.year();
    if !(0..=9999).contains(&year) {
        // Signed and wider years, as chrono writes them; rare enough for its formatter.
        return at.format("%Y-%m").to_string();
    }
    // Written digit by digit: `format!` costs more than the rest of a usage record.
    let (year, month) = (year as u32, at.month());
    let digit = |n: u32| char::from_digit(n % 10, 10).expect("a decimal digit");
    [
        digit(year / 1000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        '-',
        digit(month / 10),
        digit(month),
    ]
    .iter()
    .collect()
}

/// A rollup key: tenant, bucket, provider, model, agent, key.
pub type GroupKey = (String, DateTime<Utc>, String, String, String, String);

/// Sums of a rollup row (read from the columns of the same names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Sums {
    pub messages: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_micros: i64,
}

impl Sums {
    pub fn add(&mut self, record: &UsageRecord) {
        self.messages += 1;
        self.tokens_in += record.tokens_in;
        self.tokens_out += record.tokens_out;
        self.cost_micros += record.cost_micros;
    }

    pub fn merge(&mut self, other: &Sums) {
        self.messages += other.messages;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.cost_micros += other.cost_micros;
    }
}

fn key(record: &UsageRecord, bucket: DateTime<Utc>) -> GroupKey {
    let (tenant, bucket, provider, model, agent, api_key) = key_ref(record, bucket);
    (
        tenant.to_owned(),
        bucket,
        provider.to_owned(),
        model.to_owned(),
        agent.to_owned(),
        api_key.to_owned(),
    )
}

/// A [`GroupKey`] borrowed from its record.
type KeyRef<'a> = (&'a str, DateTime<Utc>, &'a str, &'a str, &'a str, &'a str);

fn key_ref(record: &UsageRecord, bucket: DateTime<Utc>) -> KeyRef<'_> {
    (
        &record.tenant_id,
        bucket,
        &record.provider,
        &record.model,
        &record.agent_id,
        &record.api_key,
    )
}

/// Builds the usage tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageProjector;

#[async_trait]
impl Projector for UsageProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "usage_records",
            "usage_hourly",
            "usage_daily",
            "usage_sessions",
            "usage_session_days",
        ]
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
        let mut records = Vec::new();
        for event in events {
            if let Some(record) = record_of(event)? {
                records.push(record);
            }
        }
        if tx.backend() == Backend::Postgres {
            for chunk in records.chunks(CHUNK) {
                apply_in_one_statement(tx, target, chunk).await?;
            }
            return Ok(());
        }
        // Only records inserted now count, so applying an event twice changes nothing.
        let mut inserted: Vec<(String, String)> = Vec::new();
        static RECORDS: Texts = Texts::new(CHUNK);
        for chunk in records.chunks(CHUNK) {
            let sql = crate::rows_text(&RECORDS, tx, target, chunk.len(), || {
                format!(
                    "INSERT INTO {} (tenant_id, message_id, session_id, agent_id, provider, \
                     model, api_key, tokens_in, tokens_out, cost_micros, price_micros_per_1k, \
                     recorded_at) VALUES {} ON CONFLICT (tenant_id, message_id) DO NOTHING \
                     RETURNING tenant_id, message_id",
                    target.table("usage_records"),
                    tx.backend().values(chunk.len(), 12)
                )
            });
            let mut query = Statement::new(&sql);
            for r in chunk {
                query = query
                    .bind(r.tenant_id.as_str())
                    .bind(r.message_id.as_str())
                    .bind(r.session_id.as_str())
                    .bind(r.agent_id.as_str())
                    .bind(r.provider.as_str())
                    .bind(r.model.as_str())
                    .bind(r.api_key.as_str())
                    .bind(r.tokens_in)
                    .bind(r.tokens_out)
                    .bind(r.cost_micros)
                    .bind(r.price_micros_per_1k)
                    .bind(r.recorded_at);
            }
            for row in tx.fetch_all(query).await? {
                inserted.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        // Keys borrowed from the records: the rows are written from them, nothing is kept.
        let inserted: BTreeSet<(&str, &str)> = inserted
            .iter()
            .map(|(tenant, message)| (tenant.as_str(), message.as_str()))
            .collect();
        let mut hourly: BTreeMap<KeyRef<'_>, Sums> = BTreeMap::new();
        let mut daily: BTreeMap<KeyRef<'_>, Sums> = BTreeMap::new();
        let mut sessions: BTreeSet<(KeyRef<'_>, &str)> = BTreeSet::new();
        let mut session_days: BTreeSet<SessionDayRef<'_>> = BTreeSet::new();
        for record in &records {
            if !inserted.contains(&(record.tenant_id.as_str(), record.message_id.as_str())) {
                continue;
            }
            let hour = hour_of(record.recorded_at);
            hourly.entry(key_ref(record, hour)).or_default().add(record);
            daily
                .entry(key_ref(record, day_of(record.recorded_at)))
                .or_default()
                .add(record);
            sessions.insert((key_ref(record, hour), record.session_id.as_str()));
            session_days.insert(session_day_ref(record));
        }
        static HOURLY: Texts = Texts::new(CHUNK);
        static DAILY: Texts = Texts::new(CHUNK);
        for (table, texts, sums) in [
            ("usage_hourly", &HOURLY, &hourly),
            ("usage_daily", &DAILY, &daily),
        ] {
            let rows: Vec<_> = sums.iter().collect();
            for chunk in rows.chunks(CHUNK) {
                let sql = crate::rows_text(texts, tx, target, chunk.len(), || {
                    format!(
                        "INSERT INTO {} AS t (tenant_id, bucket, provider, model, agent_id, \
                         api_key, messages, tokens_in, tokens_out, cost_micros) VALUES {} \
                         ON CONFLICT (tenant_id, bucket, provider, model, agent_id, api_key) \
                         DO UPDATE SET messages = t.messages + excluded.messages, \
                         tokens_in = t.tokens_in + excluded.tokens_in, \
                         tokens_out = t.tokens_out + excluded.tokens_out, \
                         cost_micros = t.cost_micros + excluded.cost_micros",
                        target.table(table),
                        tx.backend().values(chunk.len(), 10)
                    )
                });
                let mut query = Statement::new(&sql);
                for ((tenant, bucket, provider, model, agent, api_key), sums) in chunk {
                    query = query
                        .bind(*tenant)
                        .bind(*bucket)
                        .bind(*provider)
                        .bind(*model)
                        .bind(*agent)
                        .bind(*api_key)
                        .bind(sums.messages)
                        .bind(sums.tokens_in)
                        .bind(sums.tokens_out)
                        .bind(sums.cost_micros);
                }
                tx.execute(query).await?;
            }
        }
        let sessions: Vec<_> = sessions.into_iter().collect();
        static SESSIONS: Texts = Texts::new(CHUNK);
        for chunk in sessions.chunks(CHUNK) {
            let sql = crate::rows_text(&SESSIONS, tx, target, chunk.len(), || {
                format!(
                    "INSERT INTO {} (tenant_id, bucket, session_id, provider, model, agent_id, \
                     api_key) VALUES {} ON CONFLICT DO NOTHING",
                    target.table("usage_sessions"),
                    tx.backend().values(chunk.len(), 7)
                )
            });
            let mut query = Statement::new(&sql);
            for ((tenant, bucket, provider, model, agent, api_key), session) in chunk {
                query = query
                    .bind(*tenant)
                    .bind(*bucket)
                    .bind(*session)
                    .bind(*provider)
                    .bind(*model)
                    .bind(*agent)
                    .bind(*api_key);
            }
            tx.execute(query).await?;
        }
        let session_days: Vec<_> = session_days.into_iter().collect();
        static SESSION_DAYS: Texts = Texts::new(CHUNK);
        for chunk in session_days.chunks(CHUNK) {
            let sql = crate::rows_text(&SESSION_DAYS, tx, target, chunk.len(), || {
                format!(
                    "INSERT INTO {} (tenant_id, bucket, provider, agent_id, session_id) \
                     VALUES {} ON CONFLICT DO NOTHING",
                    target.table("usage_session_days"),
                    tx.backend().values(chunk.len(), 5)
                )
            });
            let mut query = Statement::new(&sql);
            for (tenant, bucket, provider, agent, session) in chunk {
                query = query
                    .bind(*tenant)
                    .bind(*bucket)
                    .bind(*provider)
                    .bind(*agent)
                    .bind(*session);
            }
            tx.execute(query).await?;
        }
        Ok(())
    }
}

/// On PostgreSQL, a batch's usage rows in one statement (one round trip instead of six): the
/// records, with their hour and day (bucketed here, as on SQLite), are bound as one array per
/// column; the records are inserted, and only those inserted now (so applying an event twice
/// changes nothing) are summed into the rollups by data-modifying `WITH`s reading the
/// insert's `RETURNING`. Each rollup's rows go in key order, as on SQLite, and its keys are
/// distinct (grouped), as one statement may touch a row only once.
async fn apply_in_one_statement(
    tx: &mut Tx,
    target: Target,
    records: &[UsageRecord],
) -> Result<(), sqlx::Error> {
    static TEXT: Texts = Texts::new(1);
    let text =
        |column: fn(&UsageRecord) -> &str| -> Vec<&str> { records.iter().map(column).collect() };
    let number =
        |column: fn(&UsageRecord) -> i64| -> Vec<i64> { records.iter().map(column).collect() };
    let time = |bucket: fn(DateTime<Utc>) -> DateTime<Utc>| -> Vec<DateTime<Utc>> {
        records.iter().map(|r| bucket(r.recorded_at)).collect()
    };
    // One text whatever the number of records.
    let sql = crate::rows_text(&TEXT, tx, target, 1, || one_statement(target));
    let statement = Statement::new(&sql)
        .bind(text(|r| &r.tenant_id))
        .bind(text(|r| &r.message_id))
        .bind(text(|r| &r.session_id))
        .bind(text(|r| &r.agent_id))
        .bind(text(|r| &r.provider))
        .bind(text(|r| &r.model))
        .bind(text(|r| &r.api_key))
        .bind(number(|r| r.tokens_in))
        .bind(number(|r| r.tokens_out))
        .bind(number(|r| r.cost_micros))
        .bind(number(|r| r.price_micros_per_1k))
        .bind(time(|at| at))
        .bind(time(hour_of))
        .bind(time(day_of));
    tx.execute(statement).await?;
    Ok(())
}

/// The text of [`apply_in_one_statement`] for `target`'s tables.
fn one_statement(target: Target) -> String {
    let rollup = |table: &str, bucket: &str| {
        format!(
            "INSERT INTO {} AS t (tenant_id, bucket, provider, model, agent_id, api_key, \
             messages, tokens_in, tokens_out, cost_micros) \
             SELECT tenant_id, {bucket}, provider, model, agent_id, api_key, count(*), \
             sum(tokens_in)::bigint, sum(tokens_out)::bigint, sum(cost_micros)::bigint \
             FROM fresh GROUP BY tenant_id, {bucket}, provider, model, agent_id, api_key \
             ORDER BY tenant_id, {bucket}, provider, model, agent_id, api_key \
             ON CONFLICT (tenant_id, bucket, provider, model, agent_id, api_key) \
             DO UPDATE SET messages = t.messages + excluded.messages, \
             tokens_in = t.tokens_in + excluded.tokens_in, \
             tokens_out = t.tokens_out + excluded.tokens_out, \
             cost_micros = t.cost_micros + excluded.cost_micros",
            target.table(table)
        )
    };
    format!(
        "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], \
         $12::timestamptz[], $13::timestamptz[], $14::timestamptz[]) AS r (tenant_id, \
         message_id, session_id, agent_id, provider, model, api_key, tokens_in, tokens_out, \
         cost_micros, price_micros_per_1k, recorded_at, hour, day)), \
         inserted AS (INSERT INTO {records} (tenant_id, message_id, session_id, agent_id, \
         provider, model, api_key, tokens_in, tokens_out, cost_micros, price_micros_per_1k, \
         recorded_at) SELECT tenant_id, message_id, session_id, agent_id, provider, model, \
         api_key, tokens_in, tokens_out, cost_micros, price_micros_per_1k, recorded_at \
         FROM r ORDER BY tenant_id, message_id \
         ON CONFLICT (tenant_id, message_id) DO NOTHING RETURNING tenant_id, message_id), \
         fresh AS (SELECT r.* FROM r JOIN inserted i \
         ON i.tenant_id = r.tenant_id AND i.message_id = r.message_id), \
         hourly AS ({hourly}), daily AS ({daily}), \
         sessions AS (INSERT INTO {sessions} (tenant_id, bucket, session_id, provider, model, \
         agent_id, api_key) SELECT DISTINCT tenant_id, hour, session_id, provider, model, \
         agent_id, api_key FROM fresh \
         ORDER BY tenant_id, hour, session_id, provider, model, agent_id, api_key \
         ON CONFLICT DO NOTHING) \
         INSERT INTO {session_days} (tenant_id, bucket, provider, agent_id, session_id) \
         SELECT DISTINCT tenant_id, day, provider, agent_id, session_id FROM fresh \
         ORDER BY tenant_id, day, provider, agent_id, session_id ON CONFLICT DO NOTHING",
        records = target.table("usage_records"),
        hourly = rollup("usage_hourly", "hour"),
        daily = rollup("usage_daily", "day"),
        sessions = target.table("usage_sessions"),
        session_days = target.table("usage_session_days"),
    )
}

/// A row of `usage_session_days`: tenant, UTC day, provider, agent, session.
type SessionDay = (String, DateTime<Utc>, String, String, String);

fn session_day(record: &UsageRecord) -> SessionDay {
    let (tenant, day, provider, agent, session) = session_day_ref(record);
    (
        tenant.to_owned(),
        day,
        provider.to_owned(),
        agent.to_owned(),
        session.to_owned(),
    )
}

/// A [`SessionDay`] borrowed from its record.
type SessionDayRef<'a> = (&'a str, DateTime<Utc>, &'a str, &'a str, &'a str);

fn session_day_ref(record: &UsageRecord) -> SessionDayRef<'_> {
    (
        &record.tenant_id,
        day_of(record.recorded_at),
        &record.provider,
        &record.agent_id,
        &record.session_id,
    )
}

/// Rows per multi-row statement (well under both databases' parameter limits).
const CHUNK: usize = 500;

/// Keeps `usage_spend` in the append's own transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpendProjection;

/// Adds `spend` (micro-dollars by tenant, scope and month) to `usage_spend`: one upsert for
/// up to [`CHUNK`] rows, its rows in key order (an insert takes its rows' locks in the order
/// of its `VALUES`), so that concurrent appends lock rows in the same order and cannot
/// deadlock. The keys are distinct, as one statement may touch a row only once.
async fn add_spend(
    tx: &mut Tx,
    spend: &BTreeMap<(String, String, String), i64>,
) -> Result<(), sqlx::Error> {
    settle_and_add_spend(tx, &[], spend).await
}

/// Ends the budget reservations of `settled` (tenant, user message id) and adds `spend` (see
/// [`add_spend`]). On PostgreSQL the reservations go in the first upsert's statement (a
/// data-modifying `WITH`, which runs whether or not the insert reads it): one round trip
/// for a batch of replies.
async fn settle_and_add_spend(
    tx: &mut Tx,
    settled: &[(&str, String)],
    spend: &BTreeMap<(String, String, String), i64>,
) -> Result<(), sqlx::Error> {
    static SPEND_UPSERT: Texts = Texts::new(CHUNK);
    static SETTLING_UPSERT: Texts = Texts::new(CHUNK);
    let backend = tx.backend();
    // The reservations as one JSON parameter, `[[tenant, message id], …]`: one statement
    // text whatever their number.
    let mut settled = (!settled.is_empty()).then(|| {
        Json(
            settled
                .iter()
                .map(|(tenant, message)| [*tenant, message.as_str()])
                .collect::<Vec<_>>(),
        )
    });
    let rows: Vec<_> = spend.iter().collect();
    for chunk in rows.chunks(CHUNK) {
        let settling = if backend == Backend::Postgres {
            settled.take()
        } else {
            None
        };
        let texts = if settling.is_some() {
            &SETTLING_UPSERT
        } else {
            &SPEND_UPSERT
        };
        let sql = texts.get(backend, chunk.len(), || {
            let settle = if settling.is_some() {
                format!(
                    "WITH settled AS ({}) ",
                    settled_delete(backend, chunk.len() * 4 + 1)
                )
            } else {
                String::new()
            };
            format!(
                "{settle}INSERT INTO usage_spend AS s (tenant_id, scope, month, spent_micros) \
                 VALUES {} ON CONFLICT (tenant_id, scope, month) \
                 DO UPDATE SET spent_micros = s.spent_micros + excluded.spent_micros",
                backend.values(chunk.len(), 4)
            )
        });
        let mut upsert = Statement::new(&sql);
        for ((tenant, scope, month), micros) in chunk {
            upsert = upsert
                .bind(tenant.as_str())
                .bind(scope.as_str())
                .bind(month.as_str())
                .bind(**micros);
        }
        if let Some(settling) = settling {
            upsert = upsert.bind(settling);
        }
        tx.execute(upsert).await?;
    }
    if let Some(settled) = settled {
        static SETTLED_DELETE: Texts = Texts::new(1);
        let sql = SETTLED_DELETE.get(backend, 1, || settled_delete(backend, 1));
        tx.execute(Statement::new(&sql).bind(settled)).await?;
    }
    Ok(())
}

/// The delete of the budget reservations given as parameter `parameter`, a JSON array of
/// `[tenant, message id]` pairs.
fn settled_delete(backend: Backend, parameter: usize) -> String {
    let pairs = match backend {
        Backend::Postgres => {
            format!("SELECT r->>0, r->>1 FROM jsonb_array_elements(${parameter}::jsonb) r")
        }
        Backend::Sqlite => "SELECT value->>0, value->>1 FROM json_each(?)".to_string(),
    };
    format!("DELETE FROM budget_reservations WHERE (tenant_id, message_id) IN ({pairs})")
}

impl InlineProjection for SpendProjection {
    fn apply<'a>(
        &'a self,
        tx: &'a mut Tx,
        events: &'a [RecordedEvent],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AppendError>> + Send + 'a>>
    {
        Box::pin(async move {
            // Rows are updated in a fixed order (tenant, scope, month), so that concurrent
            // appends lock them in the same order and cannot deadlock.
            let mut spend: BTreeMap<(String, String, String), i64> = BTreeMap::new();
            // The messages whose budget reservation ends here: answered, or failed.
            let mut settled: Vec<(&str, String)> = Vec::new();
            for event in events {
                if event.event_type == "MessageFailed"
                    && let Some(failed) = failed_message(event)
                {
                    settled.push(failed);
                    continue;
                }
                let reply = billed(event).map_err(|source| AppendError::Inline {
                    projection: "usage_spend",
                    event_id: event.event_id,
                    source,
                })?;
                let Some(reply) = reply else {
                    continue;
                };
                settled.push((event.tenant_id.as_str(), reply.reply_to.to_owned()));
                let month = month_of(event.recorded_at);
                for scope in [TENANT_SCOPE.to_string(), agent_scope(reply.agent_id)] {
                    *spend
                        .entry((event.tenant_id.clone(), scope, month.clone()))
                        .or_default() += stored(reply.cost_micros);
                }
            }
            // A message's budget reservation ends with its reply (billed here, in the same
            // transaction) or its failure.
            settle_and_add_spend(tx, &settled, &spend).await?;
            Ok(())
        })
    }
}

const RESERVATION_DELETE: &str =
    "DELETE FROM budget_reservations WHERE tenant_id = $1 AND message_id = $2";

/// The tenant and user message of a `MessageFailed` event: its budget reservation ends.
fn failed_message(event: &RecordedEvent) -> Option<(&str, String)> {
    if event.aggregate_type != Session::TYPE {
        return None;
    }
    match crate::decode::<SessionEvent>(event).ok()? {
        SessionEvent::MessageFailed { message_id, .. } => {
            Some((event.tenant_id.as_str(), message_id))
        }
        _ => None,
    }
}

/// A hard budget a message must fit: its scope (`tenant` or `agent:<id>`) and monthly limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardLimit {
    pub scope: String,
    pub limit_micros: u64,
}

/// What a message reserves of its budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The user message.
    pub message_id: String,
    /// The month the spend counts in (`2026-12`).
    pub month: String,
    /// An upper bound of its reply's cost, in micro-dollars.
    pub estimate: u64,
    /// Now, and when the reservation stops counting if nothing ends it before, in
    /// milliseconds since the Unix epoch.
    pub now_ms: i64,
    pub expires_at_ms: i64,
}

/// What [`admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The message's reservation is recorded: it may be sent.
    Admitted,
    /// The budget of `scope` is spent: no message may be sent this month.
    Exceeded {
        scope: String,
        limit_micros: u64,
        spent_micros: u64,
    },
    /// Messages in flight hold the rest of the budget: ask again once they are answered.
    Contended,
}

/// Admits a message under hard budgets, atomically with every other admission of the tenant:
/// refuses when a budget's month spend has reached its limit; otherwise reserves `estimate`
/// micro-dollars for `message_id` (until `expires_at_ms`) when the spend, the live
/// reservations of other messages and the estimate fit the limit, or when no other message
/// holds a reservation (so one message may go past the limit, by at most its own reply);
/// else answers `Contended`. Reserving again for the same message replaces its reservation.
pub async fn admit(
    db: &Db,
    tenant_id: &str,
    limits: &[HardLimit],
    reservation: &Reservation,
) -> Result<Admission, sqlx::Error> {
    let Reservation {
        message_id,
        month,
        estimate,
        now_ms,
        expires_at_ms,
    } = reservation;
    let (message_id, month, estimate, now_ms, expires_at_ms) = (
        message_id.as_str(),
        month.as_str(),
        *estimate,
        *now_ms,
        *expires_at_ms,
    );
    let mut tx = db.begin().await?;
    if tx.backend() == Backend::Postgres {
        // One admission of the tenant at a time, across processes (SQLite: the write
        // transaction is exclusive already).
        tx.execute(
            Statement::new("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("budget:{tenant_id}")),
        )
        .await?;
    }
    let mut decision = Admission::Admitted;
    tx.execute(
        Statement::new(
            "DELETE FROM budget_reservations WHERE tenant_id = $1 AND expires_at_ms <= $2",
        )
        .bind(tenant_id)
        .bind(now_ms),
    )
    .await?;
    for limit in limits {
        let spent = tx
            .fetch_optional_as::<(i64,)>(spend_statement(tenant_id, &limit.scope, month))
            .await?
            .map_or(0, |(micros,)| micros.max(0) as u64);
        if spent >= limit.limit_micros {
            decision = Admission::Exceeded {
                scope: limit.scope.clone(),
                limit_micros: limit.limit_micros,
                spent_micros: spent,
            };
            break;
        }
        let held = tx
            .fetch_optional_as::<(Option<i64>,)>(
                Statement::new(
                    "SELECT CAST(SUM(micros) AS BIGINT) FROM budget_reservations \
                     WHERE tenant_id = $1 AND scope = $2 AND month = $3 \
                     AND message_id <> $4",
                )
                .bind(tenant_id)
                .bind(limit.scope.as_str())
                .bind(month)
                .bind(message_id),
            )
            .await?
            .and_then(|(micros,)| micros)
            .map_or(0, |micros| micros.max(0) as u64);
        let fits = spent.saturating_add(held).saturating_add(estimate) <= limit.limit_micros;
        if held > 0 && !fits && decision == Admission::Admitted {
            decision = Admission::Contended;
        }
    }
    if decision == Admission::Admitted {
        for limit in limits {
            tx.execute(
                Statement::new(
                    "INSERT INTO budget_reservations \
                 (tenant_id, scope, message_id, month, micros, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant_id, scope, message_id) DO UPDATE SET \
                 month = excluded.month, micros = excluded.micros, \
                 expires_at_ms = excluded.expires_at_ms",
                )
                .bind(tenant_id)
                .bind(limit.scope.as_str())
                .bind(message_id)
                .bind(month)
                .bind(stored(estimate))
                .bind(expires_at_ms),
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(decision)
}

/// Ends the reservation of `message_id`, for a message that will not be sent after all.
pub async fn release(db: &Db, tenant_id: &str, message_id: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    tx.execute(
        Statement::new(RESERVATION_DELETE)
            .bind(tenant_id)
            .bind(message_id),
    )
    .await?;
    tx.commit().await
}

/// A month's spend of `scopes` (`tenant`, `agent:<id>`), in micro-dollars, as of the last
/// commit.
pub async fn spend(
    db: &Db,
    tenant_id: &str,
    scopes: &[String],
    month: &str,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let mut spent = BTreeMap::new();
    for scope in scopes {
        let micros = db
            .fetch_optional_as::<(i64,)>(spend_statement(tenant_id, scope, month))
            .await?;
        spent.insert(scope.clone(), micros.map_or(0, |(micros,)| micros));
    }
    Ok(spent)
}

/// A scope's spend in a month.
fn spend_statement<'q>(tenant_id: &'q str, scope: &'q str, month: &'q str) -> Statement<'q> {
    Statement::new(
        "SELECT spent_micros FROM usage_spend WHERE tenant_id = $1 AND scope = $2 AND month = $3",
    )
    .bind(tenant_id)
    .bind(scope)
    .bind(month)
}

/// Builds `budgets`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetsProjector;

#[async_trait]
impl Projector for BudgetsProjector {
    fn name(&self) -> &'static str {
        BUDGETS
    }

    fn tables(&self) -> &'static [&'static str] {
        &["budgets"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Budget::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("budgets");
        let upsert = format!(
            "INSERT INTO {table} (tenant_id, scope, monthly_limit_micros, enforcement, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, scope) DO UPDATE SET \
             monthly_limit_micros = excluded.monthly_limit_micros, \
             enforcement = excluded.enforcement, updated_at = excluded.updated_at"
        );
        let delete = format!("DELETE FROM {table} WHERE tenant_id = $1 AND scope = $2");
        for event in events.iter().filter(|e| e.aggregate_type == Budget::TYPE) {
            let decoded: BudgetEvent = crate::decode(event)?;
            let tenant = event.tenant_id.as_str();
            match &decoded {
                BudgetEvent::BudgetSet {
                    scope,
                    monthly_limit_micros,
                    enforcement,
                } => {
                    tx.execute(
                        Statement::new(&upsert)
                            .bind(tenant)
                            .bind(scope.as_str())
                            .bind(stored(*monthly_limit_micros))
                            .bind(enforcement.as_str())
                            .bind(event.recorded_at),
                    )
                    .await?;
                }
                BudgetEvent::BudgetRemoved { scope } => {
                    tx.execute(Statement::new(&delete).bind(tenant).bind(scope.as_str()))
                        .await?;
                }
                BudgetEvent::BudgetThresholdReached { .. } => {}
            }
        }
        Ok(())
    }
}

/// A budget as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRecord {
    pub scope: String,
    pub monthly_limit_micros: i64,
    pub enforcement: String,
    pub updated_at: DateTime<Utc>,
}

pub async fn budgets(db: &Db, tenant_id: &str) -> Result<Vec<BudgetRecord>, sqlx::Error> {
    let rows = db
        .fetch_all(
            Statement::new(
                "SELECT scope, monthly_limit_micros, enforcement, updated_at FROM budgets \
         WHERE tenant_id = $1 ORDER BY scope",
            )
            .bind(tenant_id),
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(BudgetRecord {
                scope: row.try_get("scope")?,
                monthly_limit_micros: row.try_get("monthly_limit_micros")?,
                enforcement: row.try_get("enforcement")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}

/// A dimension usage can be grouped or filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    Provider,
    Model,
    AgentId,
    ApiKey,
}

impl Dimension {
    /// Parses the API's name of a dimension.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "provider" => Some(Self::Provider),
            "model" => Some(Self::Model),
            "agentId" => Some(Self::AgentId),
            "apiKey" => Some(Self::ApiKey),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Model => "model",
            Self::AgentId => "agentId",
            Self::ApiKey => "apiKey",
        }
    }

    /// The column: a fixed name, never user input.
    fn column(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Model => "model",
            Self::AgentId => "agent_id",
            Self::ApiKey => "api_key",
        }
    }
}

/// What a usage query selects: a tenant, a UTC range `[from, to)`, and equality filters.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    pub tenant_id: &'a str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub filters: &'a [(Dimension, String)],
}

impl Selection<'_> {
    /// `WHERE` conditions with numbered parameters; values are bound, never spliced.
    fn conditions(&self) -> String {
        let mut sql = String::from("tenant_id = $1 AND bucket >= $2 AND bucket < $3");
        for (index, (dimension, _)) in self.filters.iter().enumerate() {
            sql.push_str(&format!(" AND {} = ${}", dimension.column(), index + 4));
        }
        sql
    }

    /// `sql`, whose conditions are [`Selection::conditions`], with the selection's values.
    fn statement<'q>(&'q self, sql: &'q str) -> Statement<'q> {
        let mut statement = Statement::new(sql)
            .bind(self.tenant_id)
            .bind(self.from)
            .bind(self.to);
        for (_, value) in self.filters {
            statement.push(value.as_str());
        }
        statement
    }
}

/// One group of a grouped total: the values of its dimensions, its sums and its distinct
/// sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub bucket: Option<DateTime<Utc>>,
    pub values: Vec<String>,
    pub sums: Sums,
}

/// Sums of `table` (`usage_hourly` or `usage_daily`) over the selection, grouped by `by`
/// (and by bucket when `per_bucket`).
pub async fn totals(
    db: &Db,
    table: &str,
    selection: &Selection<'_>,
    by: &[Dimension],
    per_bucket: bool,
) -> Result<Vec<Group>, sqlx::Error> {
    let table = match table {
        "usage_daily" => "usage_daily",
        _ => "usage_hourly",
    };
    let mut columns: Vec<&str> = by.iter().map(|d| d.column()).collect();
    if per_bucket {
        columns.insert(0, "bucket");
    }
    let select = columns.iter().map(|c| format!("{c}, ")).collect::<String>();
    let group_by = if columns.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", columns.join(", "))
    };
    let sql = format!(
        "SELECT {select}CAST(COALESCE(SUM(messages), 0) AS BIGINT) AS messages, \
         CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT) AS tokens_in, \
         CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT) AS tokens_out, \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS cost_micros \
         FROM {table} WHERE {}{group_by}",
        selection.conditions()
    );
    let rows = db.fetch_all(selection.statement(&sql)).await?;
    rows.iter()
        .map(|row| {
            let values = by
                .iter()
                .map(|d| row.try_get::<String, _>(d.column()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Group {
                bucket: if per_bucket {
                    Some(row.try_get("bucket")?)
                } else {
                    None
                },
                values,
                sums: row.decode::<Sums>()?,
            })
        })
        .collect()
}

/// The (hour, session, dimension values) rows of the selection: what distinct session counts
/// per time window are made of.
pub async fn session_hours(
    db: &Db,
    selection: &Selection<'_>,
    by: &[Dimension],
) -> Result<Vec<(DateTime<Utc>, String, Vec<String>)>, sqlx::Error> {
    let select = by
        .iter()
        .map(|d| format!(", {}", d.column()))
        .collect::<String>();
    let sql = format!(
        "SELECT DISTINCT bucket, session_id{select} FROM usage_sessions WHERE {}",
        selection.conditions()
    );
    let rows = db.fetch_all(selection.statement(&sql)).await?;
    rows.iter()
        .map(|row| {
            let values = by
                .iter()
                .map(|d| row.try_get::<String, _>(d.column()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((row.try_get("bucket")?, row.try_get("session_id")?, values))
        })
        .collect()
}

/// Seed 004's rollup over a selection: totals, by provider and by agent, with distinct
/// session counts, from two index scans (one of the daily totals, one of session activity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollup {
    pub total: Sums,
    pub sessions: i64,
    /// Provider → (sums, sessions).
    pub by_provider: BTreeMap<String, (Sums, i64)>,
    /// Agent → (sums, sessions).
    pub by_agent: BTreeMap<String, (Sums, i64)>,
}

pub async fn rollup(db: &Db, selection: &Selection<'_>) -> Result<Rollup, sqlx::Error> {
    let by = [Dimension::Provider, Dimension::AgentId];
    let mut rollup = Rollup::default();
    for group in totals(db, "usage_daily", selection, &by, false).await? {
        rollup.total.merge(&group.sums);
        rollup
            .by_provider
            .entry(group.values[0].clone())
            .or_default()
            .0
            .merge(&group.sums);
        rollup
            .by_agent
            .entry(group.values[1].clone())
            .or_default()
            .0
            .merge(&group.sums);
    }
    // Distinct sessions by provider and by agent, from the narrow daily table; on PostgreSQL
    // in one scan (grouping sets), on SQLite in two. A session has one agent for life, so
    // the sessions of all agents add up to the distinct sessions overall.
    let conditions = selection.conditions();
    let counts: Vec<(Option<String>, Option<String>, i64)> = match db.backend() {
        Backend::Postgres => {
            let sql = format!(
                "SELECT provider, agent_id, COUNT(DISTINCT session_id) FROM usage_session_days \
                 WHERE {conditions} GROUP BY GROUPING SETS ((provider), (agent_id))"
            );
            db.fetch_all_as(selection.statement(&sql)).await?
        }
        Backend::Sqlite => {
            let mut counts = Vec::new();
            for (select, group) in [
                ("provider, NULL", " GROUP BY provider"),
                ("NULL, agent_id", " GROUP BY agent_id"),
            ] {
                let sql = format!(
                    "SELECT {select}, COUNT(DISTINCT session_id) FROM usage_session_days \
                     WHERE {conditions}{group}"
                );
                counts.extend(db.fetch_all_as(selection.statement(&sql)).await?);
            }
            counts
        }
    };
    for (provider, agent, sessions) in counts {
        match (provider, agent) {
            (Some(provider), _) => rollup.by_provider.entry(provider).or_default().1 = sessions,
            (None, Some(agent)) => {
                rollup.sessions += sessions;
                rollup.by_agent.entry(agent).or_default().1 = sessions;
            }
            (None, None) => {}
        }
    }
    Ok(rollup)
}

/// A page of usage records in `[from, to)`, newest first, after `(recorded_at, message_id)`.
pub async fn records(
    db: &Db,
    tenant_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    before: Option<(DateTime<Utc>, String)>,
    limit: u32,
) -> Result<Vec<UsageRecord>, sqlx::Error> {
    // Records strictly before the cursor in (recorded_at DESC, message_id DESC) order. No
    // cursor is the cursor (to, ""), which the range condition already implies.
    let (cursor_at, before_id) = before.unwrap_or((to, String::new()));
    let sql = "SELECT tenant_id, message_id, session_id, agent_id, provider, model, api_key, \
               tokens_in, tokens_out, cost_micros, price_micros_per_1k, recorded_at \
               FROM usage_records WHERE tenant_id = $1 AND recorded_at >= $2 AND recorded_at < $3 \
               AND (recorded_at < $4 OR (recorded_at = $4 AND message_id < $5)) \
               ORDER BY recorded_at DESC, message_id DESC LIMIT $6";
    let rows = db
        .fetch_all(
            Statement::new(sql)
                .bind(tenant_id)
                .bind(from)
                .bind(to)
                .bind(cursor_at)
                .bind(before_id.as_str())
                .bind(i64::from(limit)),
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(UsageRecord {
                tenant_id: row.try_get("tenant_id")?,
                message_id: row.try_get("message_id")?,
                session_id: row.try_get("session_id")?,
                agent_id: row.try_get("agent_id")?,
                provider: row.try_get("provider")?,
                model: row.try_get("model")?,
                api_key: row.try_get("api_key")?,
                tokens_in: row.try_get("tokens_in")?,
                tokens_out: row.try_get("tokens_out")?,
                cost_micros: row.try_get("cost_micros")?,
                price_micros_per_1k: row.try_get("price_micros_per_1k")?,
                recorded_at: row.try_get("recorded_at")?,
            })
        })
        .collect()
}

/// What `gateway usage verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Billed replies found in the log up to the usage projector's checkpoint.
    pub replies: u64,
    /// Their total cost, in micro-dollars.
    pub cost_micros: i64,
    pub checkpoint: String,
    /// Every difference between the log and the tables (empty: they agree exactly).
    pub mismatches: Vec<Mismatch>,
}

/// One difference between what the log says and what a usage table holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mismatch {
    pub table: &'static str,
    /// The row's key columns, by name.
    pub key: serde_json::Value,
    /// The column that differs (`messages`, `tokensIn`, `tokensOut`, `costMicros`,
    /// `spentMicros`), or `row` when the whole row is missing on one side.
    pub column: &'static str,
    /// The value the log gives (`null`: the log has no such row).
    pub log: serde_json::Value,
    /// The value the table holds (`null`: the table has no such row).
    pub table_value: serde_json::Value,
    /// What the table is off by in micro-dollars (table minus log), for amounts of money.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference_micros: Option<i64>,
}

/// The key columns of a usage table's row, by name.
trait KeyColumns {
    fn columns(&self) -> serde_json::Value;
}

impl KeyColumns for GroupKey {
    fn columns(&self) -> serde_json::Value {
        serde_json::json!({
            "tenantId": self.0, "bucket": self.1, "provider": self.2, "model": self.3,
            "agentId": self.4, "apiKey": self.5,
        })
    }
}

impl KeyColumns for (GroupKey, String) {
    fn columns(&self) -> serde_json::Value {
        let mut key = self.0.columns();
        key["sessionId"] = self.1.clone().into();
        key
    }
}

impl KeyColumns for SessionDay {
    fn columns(&self) -> serde_json::Value {
        serde_json::json!({
            "tenantId": self.0, "bucket": self.1, "provider": self.2, "agentId": self.3,
            "sessionId": self.4,
        })
    }
}

impl KeyColumns for String {
    fn columns(&self) -> serde_json::Value {
        serde_json::json!({ "tenantId": self })
    }
}

impl KeyColumns for (String, String, String) {
    fn columns(&self) -> serde_json::Value {
        serde_json::json!({ "tenantId": self.0, "scope": self.1, "month": self.2 })
    }
}

impl<T: KeyColumns> KeyColumns for &T {
    fn columns(&self) -> serde_json::Value {
        (*self).columns()
    }
}

/// A value whose columns can be compared one by one.
trait Columns {
    /// Each column's name, value, and whether it is money.
    fn each(&self) -> Vec<(&'static str, i64, bool)>;
    fn to_json(&self) -> serde_json::Value;
}

impl Columns for Sums {
    fn each(&self) -> Vec<(&'static str, i64, bool)> {
        vec![
            ("messages", self.messages, false),
            ("tokensIn", self.tokens_in, false),
            ("tokensOut", self.tokens_out, false),
            ("costMicros", self.cost_micros, true),
        ]
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Columns for i64 {
    fn each(&self) -> Vec<(&'static str, i64, bool)> {
        vec![("spentMicros", *self, true)]
    }

    fn to_json(&self) -> serde_json::Value {
        (*self).into()
    }
}

impl Columns for () {
    fn each(&self) -> Vec<(&'static str, i64, bool)> {
        Vec::new()
    }

    fn to_json(&self) -> serde_json::Value {
        true.into()
    }
}

/// The money in a whole row (its cost column), for a row missing on one side.
fn money(value: &impl Columns) -> Option<i64> {
    value
        .each()
        .into_iter()
        .find(|(_, _, money)| *money)
        .map(|(_, v, _)| v)
}

type Table = BTreeMap<GroupKey, Sums>;

async fn read_rollup(db: &Db, table: &str) -> Result<Table, sqlx::Error> {
    let sql = format!(
        "SELECT tenant_id, bucket, provider, model, agent_id, api_key, messages, tokens_in, \
         tokens_out, cost_micros FROM {table}"
    );
    let rows = db.fetch_all(Statement::new(&sql)).await?;
    rows.iter()
        .map(|row| {
            Ok((
                (
                    row.try_get("tenant_id")?,
                    row.try_get("bucket")?,
                    row.try_get("provider")?,
                    row.try_get("model")?,
                    row.try_get("agent_id")?,
                    row.try_get("api_key")?,
                ),
                row.decode::<Sums>()?,
            ))
        })
        .collect()
}

async fn read_spend(db: &Db) -> Result<BTreeMap<(String, String, String), i64>, sqlx::Error> {
    let rows: Vec<(String, String, String, i64)> = db
        .fetch_all_as(Statement::new(
            "SELECT tenant_id, scope, month, spent_micros FROM usage_spend",
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, scope, month, micros)| ((tenant, scope, month), micros))
        .collect())
}

async fn read_records(db: &Db) -> Result<BTreeMap<String, Sums>, sqlx::Error> {
    let rows = db
        .fetch_all(Statement::new(
            "SELECT tenant_id, CAST(COUNT(*) AS BIGINT) AS messages, \
         CAST(SUM(tokens_in) AS BIGINT) AS tokens_in, \
         CAST(SUM(tokens_out) AS BIGINT) AS tokens_out, \
         CAST(SUM(cost_micros) AS BIGINT) AS cost_micros \
         FROM usage_records GROUP BY tenant_id",
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("tenant_id")?, row.decode::<Sums>()?)))
        .collect()
}

async fn read_sessions(db: &Db) -> Result<BTreeSet<(GroupKey, String)>, sqlx::Error> {
    type Row = (
        String,
        DateTime<Utc>,
        String,
        String,
        String,
        String,
        String,
    );
    let rows: Vec<Row> = db
        .fetch_all_as(Statement::new(
            "SELECT tenant_id, bucket, provider, model, agent_id, api_key, session_id \
             FROM usage_sessions",
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, bucket, provider, model, agent, key, session)| {
            ((tenant, bucket, provider, model, agent, key), session)
        })
        .collect())
}

async fn read_session_days(db: &Db) -> Result<BTreeSet<SessionDay>, sqlx::Error> {
    let rows: Vec<SessionDay> = db
        .fetch_all_as(Statement::new(
            "SELECT tenant_id, bucket, provider, agent_id, session_id FROM usage_session_days",
        ))
        .await?;
    Ok(rows.into_iter().collect())
}

/// Every element of one set missing from the other, as mismatches.
fn compare_sets<T: Ord + KeyColumns>(
    table: &'static str,
    expected: &BTreeSet<T>,
    found: &BTreeSet<T>,
    mismatches: &mut Vec<Mismatch>,
) {
    let expected: BTreeMap<&T, ()> = expected.iter().map(|k| (k, ())).collect();
    let found: BTreeMap<&T, ()> = found.iter().map(|k| (k, ())).collect();
    compare(table, &expected, &found, mismatches);
}

/// Every row that differs between what the log says (`expected`) and the table (`found`),
/// column by column.
fn compare<K: Ord + KeyColumns, V: PartialEq + Columns>(
    table: &'static str,
    expected: &BTreeMap<K, V>,
    found: &BTreeMap<K, V>,
    mismatches: &mut Vec<Mismatch>,
) {
    let row = |key: &K, log: Option<&V>, held: Option<&V>| Mismatch {
        table,
        key: key.columns(),
        column: "row",
        log: log.map_or(serde_json::Value::Null, Columns::to_json),
        table_value: held.map_or(serde_json::Value::Null, Columns::to_json),
        difference_micros: match (log, held) {
            (Some(log), None) => money(log).map(|m| -m),
            (None, Some(held)) => money(held),
            _ => None,
        },
    };
    for (key, value) in expected {
        match found.get(key) {
            Some(held) if held == value => {}
            Some(held) => {
                for ((column, want, is_money), (_, have, _)) in
                    value.each().into_iter().zip(held.each())
                {
                    if want != have {
                        mismatches.push(Mismatch {
                            table,
                            key: key.columns(),
                            column,
                            log: want.into(),
                            table_value: have.into(),
                            difference_micros: is_money.then(|| have - want),
                        });
                    }
                }
            }
            None => mismatches.push(row(key, Some(value), None)),
        }
    }
    for (key, value) in found {
        if !expected.contains_key(key) {
            mismatches.push(row(key, None, Some(value)));
        }
    }
}

/// Recomputes `usage_spend` (kept inline, so no rebuild covers it) from every billed reply of
/// the log, in one transaction that locks out the appends that would change it meanwhile.
/// Returns the rows written.
pub async fn repair_spend(log: &EventLog, batch: usize) -> Result<usize, ProjectionError> {
    let mut tx = log.db().begin().await?;
    if tx.backend() == Backend::Postgres {
        // Appends update their spend in their own transaction: while this lock is held they
        // wait, and the events of those that committed before it are all visible here.
        tx.execute(Statement::new("LOCK TABLE usage_spend IN EXCLUSIVE MODE"))
            .await?;
    }
    let mut spend: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut cursor = Cursor::START;
    loop {
        let events = log
            .committed_in(&mut tx, Session::TYPE, cursor, batch.max(1))
            .await?;
        let Some(last) = events.last() else { break };
        cursor = last.cursor;
        for event in &events {
            let Some(record) = record_of(event)? else {
                continue;
            };
            let month = month_of(record.recorded_at);
            for scope in [TENANT_SCOPE.to_string(), agent_scope(&record.agent_id)] {
                *spend
                    .entry((record.tenant_id.clone(), scope, month.clone()))
                    .or_default() += record.cost_micros;
            }
        }
    }
    tx.execute(Statement::new("DELETE FROM usage_spend"))
        .await?;
    add_spend(&mut tx, &spend).await?;
    tx.commit().await?;
    Ok(spend.len())
}

/// Recomputes every usage table from the log and compares, exactly. The asynchronous tables
/// are compared with the log up to the `usage` projector's checkpoint, the inline spend with
/// the whole log; the reads are repeated until no event arrived while they ran. Differences
/// are reported only when they persist for a few seconds: on PostgreSQL the log is read below
/// the oldest open transaction, while the inline spend already counts every commit, so a
/// transient difference means a reply committed while another transaction was still open.
pub async fn verify(log: &EventLog, batch: usize) -> Result<VerifyReport, ProjectionError> {
    let db = log.db();
    const ATTEMPTS: usize = 50;
    for attempt in 1..=ATTEMPTS {
        let head_before = log.head().await?;
        let checkpoint = crate::checkpoints::read(db, NAME)
            .await?
            .unwrap_or_default();
        let (hourly, daily, records, sessions, session_days, spend) = (
            read_rollup(db, "usage_hourly").await?,
            read_rollup(db, "usage_daily").await?,
            read_records(db).await?,
            read_sessions(db).await?,
            read_session_days(db).await?,
            read_spend(db).await?,
        );
        let checkpoint_after = crate::checkpoints::read(db, NAME)
            .await?
            .unwrap_or_default();
        if log.head().await? != head_before || checkpoint_after != checkpoint {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }

        let mut report = VerifyReport {
            checkpoint: checkpoint.to_string(),
            ..VerifyReport::default()
        };
        let (mut want_hourly, mut want_daily) = (Table::new(), Table::new());
        let mut want_records: BTreeMap<String, Sums> = BTreeMap::new();
        let mut want_sessions = BTreeSet::new();
        let mut want_session_days = BTreeSet::new();
        let mut want_spend: BTreeMap<(String, String, String), i64> = BTreeMap::new();
        let mut cursor = Cursor::START;
        loop {
            let events = log.read_after(cursor, batch).await?;
            let Some(last) = events.last() else { break };
            cursor = last.cursor;
            for event in &events {
                let Some(record) = record_of(event)? else {
                    continue;
                };
                if event.cursor > head_before {
                    continue;
                }
                let month = month_of(record.recorded_at);
                for scope in [TENANT_SCOPE.to_string(), agent_scope(&record.agent_id)] {
                    *want_spend
                        .entry((record.tenant_id.clone(), scope, month.clone()))
                        .or_default() += record.cost_micros;
                }
                if event.cursor > checkpoint {
                    continue;
                }
                report.replies += 1;
                report.cost_micros += record.cost_micros;
                let hour = hour_of(record.recorded_at);
                want_hourly
                    .entry(key(&record, hour))
                    .or_default()
                    .add(&record);
                want_daily
                    .entry(key(&record, day_of(record.recorded_at)))
                    .or_default()
                    .add(&record);
                want_records
                    .entry(record.tenant_id.clone())
                    .or_default()
                    .add(&record);
                want_sessions.insert((key(&record, hour), record.session_id.clone()));
                want_session_days.insert(session_day(&record));
            }
            if cursor >= head_before {
                break;
            }
        }
        compare(
            "usage_hourly",
            &want_hourly,
            &hourly,
            &mut report.mismatches,
        );
        compare("usage_daily", &want_daily, &daily, &mut report.mismatches);
        compare(
            "usage_records",
            &want_records,
            &records,
            &mut report.mismatches,
        );
        compare("usage_spend", &want_spend, &spend, &mut report.mismatches);
        compare_sets(
            "usage_sessions",
            &want_sessions,
            &sessions,
            &mut report.mismatches,
        );
        compare_sets(
            "usage_session_days",
            &want_session_days,
            &session_days,
            &mut report.mismatches,
        );
        if !report.mismatches.is_empty() && attempt < ATTEMPTS {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        return Ok(report);
    }
    Err(ProjectionError::Unsettled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::session::AssistantReply;
    use eventlog::NewEvent;

    /// The month is written as chrono's `%Y-%m` writes it, for every year.
    #[test]
    fn months_are_written_as_chrono_writes_them() {
        for (year, month) in [
            (2026, 12),
            (1970, 1),
            (0, 7),
            (999, 3),
            (9999, 12),
            (10_000, 1),
            (-1, 5),
        ] {
            let at = Utc.with_ymd_and_hms(year, month, 28, 23, 59, 59).unwrap();
            assert_eq!(
                month_of(at),
                at.format("%Y-%m").to_string(),
                "{year}-{month}"
            );
        }
    }

    /// An hour's bucket is its start, before 1677 and after 2262 (chrono's nanosecond range)
    /// as well as between.
    #[test]
    fn hours_start_on_the_hour_in_every_year() {
        for year in [-5000, 1000, 1677, 1970, 2026, 2262, 2263, 10_000, 200_000] {
            let at = Utc.with_ymd_and_hms(year, 3, 9, 17, 42, 7).unwrap()
                + chrono::Duration::microseconds(123_456);
            let hour = Utc.with_ymd_and_hms(year, 3, 9, 17, 0, 0).unwrap();
            assert_eq!(hour_of(at), hour, "{year}");
            assert_eq!(hour_of(hour), hour, "{year}");
        }
    }

    /// The actor read in place is the one the owned metadata gives, whatever the document:
    /// complete, with optional fields, with unknown ones, or not of the metadata's shape.
    #[test]
    fn the_actor_read_in_place_is_the_metadatas() {
        use serde_json::{Value, json};
        let full = json!({"tenantId": "acme", "actor": "key_1", "requestId": "r",
            "correlationId": "c", "command": "SendMessage", "schema": 1});
        let with = |field: &str, value: Value| {
            let mut doc = full.clone();
            doc[field] = value;
            doc
        };
        let without = |field: &str| {
            let mut doc = full.clone();
            doc.as_object_mut().unwrap().remove(field);
            doc
        };
        let documents = [
            full.clone(),
            with("causationId", json!("e1")),
            with("causationId", Value::Null),
            with("idempotencyKey", json!("k")),
            with("traceparent", json!("00-ab-cd-01")),
            with("extra", json!({"deep": [1, 2]})),
            with("actor", json!("")),
            with("actor", json!("ключ \"1\"")),
            with("actor", json!(7)),
            with("tenantId", json!("a.b")),
            with("tenantId", json!("")),
            with("tenantId", json!("x".repeat(65))),
            with("schema", json!(-1)),
            with("schema", json!("1")),
            with("traceparent", json!(5)),
            without("actor"),
            without("requestId"),
            without("correlationId"),
            without("command"),
            without("schema"),
            json!(null),
            json!([]),
            json!("actor"),
        ];
        for metadata in documents {
            let event = RecordedEvent {
                cursor: Cursor::START,
                event_id: uuid::Uuid::nil(),
                tenant_id: "acme".into(),
                aggregate_type: Session::TYPE.into(),
                aggregate_id: "sess-1".into(),
                sequence: 1,
                event_type: SessionEvent::ASSISTANT_MESSAGE_RECORDED.into(),
                event_version: "1".into(),
                payload: Arc::new(Value::Null),
                metadata: Arc::new(metadata.clone()),
                recorded_at: Utc::now(),
            };
            assert_eq!(
                actor_of(&event),
                &*event.event_metadata().map(|m| m.actor).unwrap_or_default(),
                "{metadata}"
            );
        }
    }

    /// A usage record read in place from a recorded reply holds what the domain event holds.
    #[test]
    fn a_billed_reply_reads_in_place_as_the_domain_writes_it() {
        for agent_id in ["agent-1", ""] {
            // The domain's reply, serialized by the domain below: the payload as recorded.
            let reply: AssistantReply = serde_json::from_value(serde_json::json!({
                "messageId": "msg_2", "replyTo": "msg_1", "agentId": agent_id,
                "content": "Grüße \"there\"", "provider": "vendorB", "model": "m-1",
                "tokensIn": 12, "tokensOut": 30, "costMicros": 1_260,
                "price": {"microUsdPer1kTokens": 30_000}, "fallbackUsed": true, "streamed": true,
            }))
            .unwrap();
            let new = NewEvent::from_domain(&SessionEvent::AssistantMessageRecorded {
                session_id: "sess-1".into(),
                reply: reply.clone(),
            })
            .unwrap();
            let mut payload = new.payload;
            if agent_id.is_empty() {
                // Replies recorded before the agent was part of them.
                Arc::make_mut(&mut payload)
                    .as_object_mut()
                    .unwrap()
                    .remove("agentId");
            }
            let event = RecordedEvent {
                cursor: Cursor::START,
                event_id: new.event_id,
                tenant_id: "acme".into(),
                aggregate_type: Session::TYPE.into(),
                aggregate_id: "sess-1".into(),
                sequence: 4,
                event_type: new.event_type,
                event_version: new.event_version,
                payload,
                metadata: Arc::new(
                    serde_json::to_value(domain::metadata::EventMetadata::new(
                        domain::names::TenantId::parse("acme").unwrap(),
                        "key_1",
                        "req-1",
                        "SendMessage",
                    ))
                    .unwrap(),
                ),
                recorded_at: Utc::now(),
            };
            let (record, reply_to) = reply_of(&event).unwrap().unwrap();
            assert_eq!(reply_to, &*reply.reply_to);
            assert_eq!(
                record,
                UsageRecord {
                    tenant_id: "acme".into(),
                    message_id: reply.message_id.to_string(),
                    session_id: "sess-1".into(),
                    agent_id: reply.agent_id.to_string(),
                    provider: reply.provider.to_string(),
                    model: reply.model.to_string(),
                    api_key: "key_1".into(),
                    tokens_in: 12,
                    tokens_out: 30,
                    cost_micros: 1_260,
                    price_micros_per_1k: 30_000,
                    recorded_at: event.recorded_at,
                }
            );
        }
    }
}
