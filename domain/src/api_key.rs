//! API keys: issued to a tenant with roles and an optional expiry, revoked for good.
//!
//! The secret is generated outside the domain and never enters it: the aggregate records only
//! the SHA-256 of the secret, which cannot be turned back into a key (the secret has 256 bits
//! of entropy), so the events can travel to projections and subscribers safely.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::names::TenantId;
use crate::roles::Role;

/// The tenant that platform keys (role `superadmin`) belong to. Not a customer tenant.
pub const PLATFORM_TENANT: &str = "platform";

/// The longest key name.
pub const MAX_NAME_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum ApiKeyCommand {
    IssueApiKey {
        id: String,
        tenant_id: TenantId,
        name: String,
        roles: Vec<Role>,
        expires_at: Option<DateTime<Utc>>,
        /// Hex SHA-256 of the secret.
        secret_hash: String,
        /// For a service that authenticates with a client certificate instead of the key's
        /// secret: the certificate's subject common name or a DNS or URI name it carries.
        certificate_subject: Option<String>,
    },
    RevokeApiKey,
}

impl ApiKeyCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::IssueApiKey { .. } => "IssueApiKey",
            Self::RevokeApiKey => "RevokeApiKey",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ApiKeyEvent {
    /// An API key was issued (its secret is never stored, only its hash, which is not published).
    #[serde(rename_all = "camelCase")]
    ApiKeyIssued {
        id: String,
        tenant_id: TenantId,
        name: String,
        roles: Vec<Role>,
        expires_at: Option<DateTime<Utc>>,
        secret_hash: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate_subject: Option<String>,
    },
    /// An API key was revoked; it no longer authenticates.
    #[serde(rename_all = "camelCase")]
    ApiKeyRevoked { id: String },
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ApiKeyIssued { .. } => "ApiKeyIssued",
            Self::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for ApiKeyEvent {
    const VERSION: &'static str = "1.0";
}

/// Whether `subject` can name a certificate: 1 to 253 printable ASCII characters, no spaces.
pub fn valid_certificate_subject(subject: &str) -> bool {
    (1..=253).contains(&subject.len()) && subject.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("a certificate subject has 1 to 253 printable ASCII characters and no spaces")]
    InvalidCertificateSubject,
    #[error("a key with this id already exists")]
    AlreadyIssued,
    #[error("no such key")]
    NotFound,
    #[error("a key needs at least one role")]
    NoRoles,
    #[error("the superadmin role belongs to platform keys only")]
    SuperadminOutsidePlatform,
    #[error("the name must be 1 to {MAX_NAME_LEN} characters and not blank")]
    InvalidName,
    #[error("the expiry must be in the future")]
    ExpiryInPast,
}

/// Services of the API key aggregate: the clock that judges expiries.
pub type ApiKeyServices = Arc<dyn Clock>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    id: Option<String>,
    revoked: bool,
}

impl ApiKey {
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }
}

impl Aggregate for ApiKey {
    const TYPE: &'static str = "ApiKey";
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;
    type Services = ApiKeyServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        clock: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ApiKeyCommand::IssueApiKey {
                id,
                tenant_id,
                name,
                roles,
                expires_at,
                secret_hash,
                certificate_subject,
            } => {
                if self.id.is_some() {
                    return Err(ApiKeyError::AlreadyIssued);
                }
                let name = name.trim().to_string();
                if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
                    return Err(ApiKeyError::InvalidName);
                }
                let mut roles = roles;
                roles.sort();
                roles.dedup();
                if roles.is_empty() {
                    return Err(ApiKeyError::NoRoles);
                }
                let platform = tenant_id.as_str() == PLATFORM_TENANT;
                if roles.contains(&Role::Superadmin) != platform || (platform && roles.len() > 1) {
                    return Err(ApiKeyError::SuperadminOutsidePlatform);
                }
                if expires_at.is_some_and(|at| at <= clock.now()) {
                    return Err(ApiKeyError::ExpiryInPast);
                }
                if certificate_subject
                    .as_ref()
                    .is_some_and(|subject| !valid_certificate_subject(subject))
                {
                    return Err(ApiKeyError::InvalidCertificateSubject);
                }
                let event = ApiKeyEvent::ApiKeyIssued {
                    id,
                    tenant_id,
                    name,
                    roles,
                    expires_at,
                    secret_hash,
                    certificate_subject,
                };
                sink.write(event, self).await;
            }
            ApiKeyCommand::RevokeApiKey => {
                let id = self.id.clone().ok_or(ApiKeyError::NotFound)?;
                if !self.revoked {
                    sink.write(ApiKeyEvent::ApiKeyRevoked { id }, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ApiKeyEvent::ApiKeyIssued { id, .. } => self.id = Some(id),
            ApiKeyEvent::ApiKeyRevoked { .. } => self.revoked = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::clock::FixedClock;

    fn clock() -> ApiKeyServices {
        Arc::new(FixedClock(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        ))
    }

    fn issue(tenant: &str, roles: Vec<Role>) -> ApiKeyCommand {
        ApiKeyCommand::IssueApiKey {
            id: "key_1".into(),
            tenant_id: TenantId::parse(tenant).unwrap(),
            name: "ci".into(),
            roles,
            expires_at: None,
            secret_hash: "ab".into(),
            certificate_subject: None,
        }
    }

    fn issued() -> ApiKeyEvent {
        ApiKeyEvent::ApiKeyIssued {
            id: "key_1".into(),
            tenant_id: TenantId::parse("acme").unwrap(),
            name: "ci".into(),
            roles: vec![Role::Writer, Role::Reader],
            expires_at: None,
            secret_hash: "ab".into(),
            certificate_subject: None,
        }
    }

    #[test]
    fn a_key_is_issued_with_sorted_unique_roles() {
        TestFramework::<ApiKey>::with(clock())
            .given_no_previous_events()
            .when(issue(
                "acme",
                vec![Role::Reader, Role::Writer, Role::Reader],
            ))
            .then_expect_events(vec![issued()]);
    }

    #[test]
    fn a_key_without_roles_is_refused() {
        TestFramework::<ApiKey>::with(clock())
            .given_no_previous_events()
            .when(issue("acme", vec![]))
            .then_expect_error(ApiKeyError::NoRoles);
    }

    #[test]
    fn a_tenant_key_cannot_be_superadmin() {
        TestFramework::<ApiKey>::with(clock())
            .given_no_previous_events()
            .when(issue("acme", vec![Role::Admin, Role::Superadmin]))
            .then_expect_error(ApiKeyError::SuperadminOutsidePlatform);
    }

    #[test]
    fn a_platform_key_is_superadmin_only() {
        TestFramework::<ApiKey>::with(clock())
            .given_no_previous_events()
            .when(issue(PLATFORM_TENANT, vec![Role::Admin]))
            .then_expect_error(ApiKeyError::SuperadminOutsidePlatform);
    }

    #[test]
    fn an_expiry_in_the_past_is_refused() {
        let mut command = issue("acme", vec![Role::Reader]);
        if let ApiKeyCommand::IssueApiKey { expires_at, .. } = &mut command {
            *expires_at = Some(Utc.with_ymd_and_hms(2025, 12, 31, 0, 0, 0).unwrap());
        }
        TestFramework::<ApiKey>::with(clock())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(ApiKeyError::ExpiryInPast);
    }

    #[test]
    fn revoking_twice_records_one_revocation() {
        TestFramework::<ApiKey>::with(clock())
            .given(vec![issued()])
            .when(ApiKeyCommand::RevokeApiKey)
            .then_expect_events(vec![ApiKeyEvent::ApiKeyRevoked { id: "key_1".into() }]);
        TestFramework::<ApiKey>::with(clock())
            .given(vec![
                issued(),
                ApiKeyEvent::ApiKeyRevoked { id: "key_1".into() },
            ])
            .when(ApiKeyCommand::RevokeApiKey)
            .then_expect_events(vec![]);
    }

    #[test]
    fn revoking_an_unknown_key_is_not_found() {
        TestFramework::<ApiKey>::with(clock())
            .given_no_previous_events()
            .when(ApiKeyCommand::RevokeApiKey)
            .then_expect_error(ApiKeyError::NotFound);
    }
}
