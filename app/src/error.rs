//! The errors of the use cases: typed, one variant per answer a client can tell apart.
//!
//! Each variant is either a refusal (the request's answer, which an idempotent retry gets
//! again: [`Error::is_refusal`]) or a failure without an answer (the key is released and the
//! request may be retried). The transport gives each variant its status and stable code, in
//! one `match` (the HTTP crate's `error.rs`).

use serde::Serialize;
use serde_json::Value;

/// Everything a use case can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key was used with another request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// A request with this key is still running.
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyInFlight,
    #[error("no tenant '{0}'")]
    TenantNotFound(String),
    #[error("a tenant '{0}' already exists")]
    TenantAlreadyExists(String),
    #[error("no API key '{0}'")]
    ApiKeyNotFound(String),
    /// The tenant id is malformed.
    #[error("invalid tenant id: {0}")]
    InvalidTenant(String),
    /// The entity type in the path is malformed or reserved.
    #[error("invalid entity type: {0}")]
    InvalidEntityType(String),
    /// The record id is malformed.
    #[error("invalid id: {0}")]
    InvalidId(String),
    /// A query parameter or header is malformed.
    #[error("invalid {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// Well-formed JSON that breaks a rule; one entry per field.
    #[error("the request body is not valid")]
    Validation(Vec<FieldError>),
    #[error("no {entity_type} record with id '{id}'")]
    EntityNotFound { entity_type: String, id: String },
    /// A create with an id that is taken (also by a deleted record).
    #[error("a {entity_type} record with id '{id}' already exists")]
    EntityAlreadyExists { entity_type: String, id: String },
    #[error("no entity type '{0}'")]
    EntityTypeNotFound(String),
    #[error("an entity type '{0}' already exists")]
    EntityTypeAlreadyExists(String),
    #[error("the change is incompatible with records written under the current schema")]
    IncompatibleSchemaChange(Vec<FieldError>),
    #[error("another {entity_type} record already has this {field}")]
    UniqueViolation {
        entity_type: String,
        field: String,
        value: Value,
        existing_id: String,
    },
    #[error("the {entity_type} record '{id}' is referenced by other records")]
    ReferenceRestricted {
        entity_type: String,
        id: String,
        referrers: Value,
    },
    /// The entity type declares no such relation.
    #[error("{entity_type} records have no relation '{relation}'")]
    RelationNotFound {
        entity_type: String,
        relation: String,
    },
    /// The record has no such edge (unlink).
    #[error("{entity_type} record '{id}' is not linked to '{target_id}' by '{relation}'")]
    EdgeNotFound {
        entity_type: String,
        id: String,
        relation: String,
        target_id: String,
    },
    /// A record would have more relations than a record may have.
    #[error("the {entity_type} record '{id}' has the most relations a record may have ({limit})")]
    RelationLimit {
        entity_type: String,
        id: String,
        limit: usize,
    },
    #[error("operation {index} failed: {error}")]
    OperationFailed { index: usize, error: Box<Error> },
    /// The command expected the record at another version than its current one.
    #[error("the record is at version {actual}, not {expected}")]
    VersionConflict { expected: u64, actual: u64 },
    /// Other writers kept changing the record; retry.
    #[error("the record is being modified concurrently; retry the request")]
    ConcurrentModification,
    /// The route needs an `Idempotency-Key`.
    #[error("this route requires an Idempotency-Key header")]
    IdempotencyKeyRequired,
    #[error("Agent with id '{0}' not found or does not belong to this tenant")]
    AgentNotFound(String),
    /// The agent takes no new sessions, messages or changes.
    #[error("agent '{0}' is archived")]
    AgentArchived(String),
    #[error("Session with id '{0}' not found or does not belong to this tenant")]
    SessionNotFound(String),
    /// The session takes no new messages.
    #[error("session '{0}' is closed")]
    SessionClosed(String),
    /// Every provider of the agent failed; the attempts are in
    /// the details.
    #[error("all providers failed")]
    AllProvidersFailed { attempts: Value },
    /// A hard monthly budget is spent.
    #[error("the monthly budget of {scope} is spent")]
    BudgetExceeded {
        scope: String,
        limit_micros: u64,
        spent_micros: u64,
    },
    /// Messages in flight hold the rest of a hard budget; retry.
    #[error("messages in flight hold the rest of the budget; retry in a moment")]
    BudgetContended,
    #[error("no budget is set for this scope")]
    BudgetNotFound,
    /// Strict consistency was asked for and the read model had not
    /// caught up in time.
    #[error("the read model has not caught up with the requested position yet")]
    ProjectionStale { events_behind: u64 },
    /// The database did not answer in time.
    #[error("the database is unavailable")]
    DatabaseUnavailable,
    /// A bug or an unexpected failure; the cause is logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// One invalid field of a request body or command.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldError {
    /// The field's name or JSON path.
    pub field: String,
    pub message: String,
}

impl From<domain::entity_type::FieldViolation> for FieldError {
    fn from(violation: domain::entity_type::FieldViolation) -> Self {
        Self {
            field: violation.field,
            message: violation.message,
        }
    }
}

impl Error {
    /// Wraps any unexpected failure.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    /// Whether the error is the answer to the request (the client's to fix), which an
    /// idempotent retry gets again, rather than a failure that left the request unanswered.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::OperationFailed { error, .. } => error.is_refusal(),
            Error::AllProvidersFailed { .. }
            | Error::BudgetContended
            | Error::ProjectionStale { .. }
            | Error::DatabaseUnavailable
            | Error::Internal(_) => false,
            Error::IdempotencyKeyReused
            | Error::IdempotencyInFlight
            | Error::TenantNotFound(_)
            | Error::TenantAlreadyExists(_)
            | Error::ApiKeyNotFound(_)
            | Error::InvalidTenant(_)
            | Error::InvalidEntityType(_)
            | Error::InvalidId(_)
            | Error::InvalidParameter { .. }
            | Error::Validation(_)
            | Error::EntityNotFound { .. }
            | Error::EntityAlreadyExists { .. }
            | Error::EntityTypeNotFound(_)
            | Error::EntityTypeAlreadyExists(_)
            | Error::IncompatibleSchemaChange(_)
            | Error::UniqueViolation { .. }
            | Error::ReferenceRestricted { .. }
            | Error::RelationNotFound { .. }
            | Error::EdgeNotFound { .. }
            | Error::RelationLimit { .. }
            | Error::VersionConflict { .. }
            | Error::ConcurrentModification
            | Error::IdempotencyKeyRequired
            | Error::AgentNotFound(_)
            | Error::AgentArchived(_)
            | Error::SessionNotFound(_)
            | Error::SessionClosed(_)
            | Error::BudgetExceeded { .. }
            | Error::BudgetNotFound => true,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(%error, "database unavailable");
                Self::DatabaseUnavailable
            }
            other => Self::internal(other),
        }
    }
}
