//! Each aggregate's refusals as the use cases' [`Error`]s: the one place a domain error
//! becomes an answer.

use domain::agent::AgentError;
use domain::api_key::ApiKeyError;
use domain::budget::BudgetError;
use domain::entity_type::EntityTypeError;
use domain::names::EntityTypeName;
use domain::tenant::TenantError;

use crate::bootstrap::CreateTenantError;
use crate::error::{Error, FieldError};

pub fn budget(error: BudgetError) -> Error {
    match error {
        BudgetError::NotSet => Error::BudgetNotFound,
        BudgetError::ZeroLimit => Error::Validation(vec![FieldError {
            field: "monthlyLimitUsd".into(),
            message: "must be more than zero".into(),
        }]),
    }
}

pub fn agent(id: &str) -> impl Fn(AgentError) -> Error {
    let id = id.to_string();
    move |error| match error {
        AgentError::AlreadyExists => Error::internal(anyhow::anyhow!("agent id {id} reused")),
        AgentError::NotFound => Error::AgentNotFound(id.clone()),
        AgentError::Archived => Error::AgentArchived(id.clone()),
        AgentError::VersionConflict { expected, actual } => {
            Error::VersionConflict { expected, actual }
        }
        AgentError::Invalid(fields) => Error::Validation(
            fields
                .into_iter()
                .map(|(field, message)| FieldError { field, message })
                .collect(),
        ),
    }
}

pub fn tenant(id: &str) -> impl Fn(TenantError) -> Error {
    let id = id.to_string();
    move |error| match error {
        TenantError::NotFound => Error::TenantNotFound(id.clone()),
        TenantError::AlreadyExists | TenantError::ReservedId => {
            Error::TenantAlreadyExists(id.clone())
        }
        TenantError::InvalidName => Error::Validation(vec![FieldError {
            field: "name".into(),
            message: error.to_string(),
        }]),
        TenantError::InvalidRateLimit => Error::Validation(vec![FieldError {
            field: "rateLimitPerMinute".into(),
            message: error.to_string(),
        }]),
    }
}

pub fn api_key(id: &str) -> impl Fn(ApiKeyError) -> Error {
    let id = id.to_string();
    move |error| {
        let field = match error {
            ApiKeyError::NotFound | ApiKeyError::AlreadyIssued => {
                return Error::ApiKeyNotFound(id.clone());
            }
            ApiKeyError::NoRoles | ApiKeyError::SuperadminOutsidePlatform => "roles",
            ApiKeyError::InvalidName => "name",
            ApiKeyError::ExpiryInPast => "expiresAt",
            ApiKeyError::InvalidCertificateSubject => "certificateSubject",
        };
        Error::Validation(vec![FieldError {
            field: field.into(),
            message: error.to_string(),
        }])
    }
}

pub fn entity_type(name: &EntityTypeName) -> impl Fn(EntityTypeError) -> Error {
    let name = name.to_string();
    move |error| match error {
        EntityTypeError::AlreadyExists => Error::EntityTypeAlreadyExists(name.clone()),
        EntityTypeError::NotFound => Error::EntityTypeNotFound(name.clone()),
        EntityTypeError::Invalid(problems) => Error::Validation(fields(problems)),
        EntityTypeError::Incompatible(problems) => {
            Error::IncompatibleSchemaChange(fields(problems))
        }
        EntityTypeError::VersionConflict { expected, actual } => {
            Error::VersionConflict { expected, actual }
        }
    }
}

/// A schema's problems as field errors.
pub fn fields(problems: Vec<domain::entity_type::FieldViolation>) -> Vec<FieldError> {
    problems.into_iter().map(FieldError::from).collect()
}

/// Why a tenant was not created, as an answer.
pub fn create_tenant(id: &str) -> impl Fn(CreateTenantError) -> Error {
    let id = id.to_string();
    move |error| match error {
        CreateTenantError::Tenant(e) => tenant(&id)(e),
        CreateTenantError::AlreadyExists => Error::TenantAlreadyExists(id.clone()),
        CreateTenantError::Key(e) => Error::internal(e),
        CreateTenantError::Append(eventlog::AppendError::Database(error)) => error.into(),
        CreateTenantError::Append(error) => Error::internal(error),
        CreateTenantError::Undecided(cause) => Error::internal(anyhow::anyhow!(cause)),
    }
}
