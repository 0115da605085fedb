//! Read models: what the API queries instead of replaying the log.
//!
//! A [`Projector`] turns events into rows. The workers crate runs each projector in
//! transactions that move its rows and its checkpoint together, so effects are exactly-once
//! even after a crash. This crate holds the projectors, their checkpoints and the query
//! functions the API calls; it does not run loops and knows nothing of HTTP.
//!
//! Every query takes the tenant and filters by it in SQL: tenant isolation does not depend on
//! the API remembering to check.
#![forbid(unsafe_code)]

pub mod agents;
pub mod api_keys;
pub mod checkpoints;
pub mod entities;
pub mod entity_query;
pub mod entity_types;
pub mod progress;
pub mod relations;
pub mod sessions;
pub mod tenants;
pub mod usage;

use std::sync::Arc;

use async_trait::async_trait;
use eventlog::{RecordedEvent, Tx};

/// Why a projector could not apply a batch. The batch's transaction is rolled back and the
/// batch is retried.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("event {event_id} could not be decoded: {source}")]
    Decode {
        event_id: uuid::Uuid,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Another process holds the projector (a rebuild while one runs).
    #[error("another rebuild of '{0}' is running")]
    Busy(&'static str),
    /// The log kept changing while a whole-log check read it.
    #[error("the log kept changing while it was verified; try again when it is quieter")]
    Unsettled,
    /// A read model's table is not defined the way a rebuild can copy (changed by hand).
    #[error("table {table} has a definition a rebuild cannot copy: {definition}")]
    UnexpectedTable { table: String, definition: String },
}

/// Where a projector writes: its live tables, or the shadow tables of a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Live,
    Rebuild,
}

impl Target {
    /// Suffix of the shadow tables a rebuild fills before it swaps them in.
    pub const REBUILD_SUFFIX: &'static str = "__rebuild";

    /// The name of `table` for this target.
    pub fn table(self, table: &str) -> String {
        match self {
            Target::Live => table.to_string(),
            Target::Rebuild => format!("{table}{}", Self::REBUILD_SUFFIX),
        }
    }
}

/// A named function from events to read-model rows.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The projector's name: its checkpoint row and its name on the command line.
    fn name(&self) -> &'static str;

    /// The tables it owns. A rebuild recreates exactly these.
    fn tables(&self) -> &'static [&'static str];

    /// The aggregate types whose events it applies: a batch without any is not given to it
    /// (its checkpoint still moves past them).
    fn aggregate_types(&self) -> &'static [&'static str];

    /// Whether it reads the events' metadata. A rebuild of a projector that does not reads the
    /// log without it (see [`eventlog::store::Store::read_after_without_metadata`]): its
    /// events' `metadata` is then `null`.
    fn reads_metadata(&self) -> bool {
        true
    }

    /// Applies a batch of events, in log order, inside `tx`. Events the projector does not
    /// care about are skipped.
    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError>;
}

/// The text of a projector's statement whose text changes with its row count (a multi-row
/// `VALUES` list), for `rows` rows: for the live tables kept for the process in `texts` (see
/// [`eventlog::sql::Texts`]), for a rebuild's shadow tables (other names) built each time.
pub(crate) fn rows_text(
    texts: &'static eventlog::sql::Texts,
    tx: &Tx,
    target: Target,
    rows: usize,
    build: impl FnOnce() -> String,
) -> std::borrow::Cow<'static, str> {
    match target {
        Target::Live => texts.get(tx.backend(), rows, build),
        Target::Rebuild => std::borrow::Cow::Owned(build()),
    }
}

/// Decodes a recorded event as the domain event enum `E`.
pub(crate) fn decode<E: cqrs_es::DomainEvent>(event: &RecordedEvent) -> Result<E, ProjectionError> {
    event
        .decode::<E>()
        .map_err(|source| ProjectionError::Decode {
            event_id: event.event_id,
            source,
        })
}

/// Reads a recorded event's payload in place as `T`, a view borrowing its strings (the
/// payload's names, without decoding the domain event into copies of them).
pub(crate) fn read<'a, T: serde::Deserialize<'a>>(
    event: &'a RecordedEvent,
) -> Result<T, ProjectionError> {
    T::deserialize(&*event.payload).map_err(|source| ProjectionError::Decode {
        event_id: event.event_id,
        source,
    })
}

/// Every projector of the gateway.
pub fn all() -> Vec<std::sync::Arc<dyn Projector>> {
    vec![
        std::sync::Arc::new(entities::EntitiesProjector),
        std::sync::Arc::new(entity_types::EntityTypesProjector),
        std::sync::Arc::new(relations::RelationsProjector),
        std::sync::Arc::new(tenants::TenantsProjector),
        std::sync::Arc::new(api_keys::ApiKeysProjector),
        std::sync::Arc::new(agents::AgentsProjector),
        std::sync::Arc::new(sessions::SessionsProjector),
        std::sync::Arc::new(sessions::TranscriptsProjector),
        std::sync::Arc::new(sessions::ProviderCallsProjector),
        std::sync::Arc::new(usage::UsageProjector),
        std::sync::Arc::new(usage::BudgetsProjector),
    ]
}

/// An `AssistantMessageRecorded` payload read in place, borrowed rather than decoded into the
/// domain's event: what the transcripts and the usage tables take of a reply. The payload is
/// flat ([`domain::session::AssistantReply`] is flattened into
/// [`domain::session::SessionEvent::AssistantMessageRecorded`]), so the names are the reply's
/// and the session's (pinned by the tests of `sessions` and `usage`).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecordedReply<'a> {
    pub session_id: &'a str,
    pub message_id: &'a str,
    pub reply_to: &'a str,
    /// Absent from replies recorded before the agent was part of them.
    #[serde(default)]
    pub agent_id: &'a str,
    pub content: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_micros: u64,
    pub price: domain::provider::Price,
    pub fallback_used: bool,
    #[serde(default)]
    pub streamed: bool,
    #[serde(default)]
    pub client_disconnected: bool,
    #[serde(default)]
    pub incomplete: bool,
}
