//! The tenant: a customer of the gateway, whose credentials stop working while it is
//! suspended.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::names::TenantId;

/// The longest tenant name.
pub const MAX_NAME_LEN: usize = 200;

/// Whether a tenant's credentials work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    #[default]
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    CreateTenant {
        id: TenantId,
        name: String,
        rate_limit_per_minute: Option<u32>,
    },
    /// Change any of the tenant's settings; fields left `None` stay as they are.
    UpdateTenant {
        name: Option<String>,
        status: Option<TenantStatus>,
        /// `Some(None)` removes the tenant's own limit (the default applies again).
        rate_limit_per_minute: Option<Option<u32>>,
    },
}

impl TenantCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateTenant { .. } => "CreateTenant",
            Self::UpdateTenant { .. } => "UpdateTenant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TenantEvent {
    /// A tenant was created.
    #[serde(rename_all = "camelCase")]
    TenantCreated {
        id: TenantId,
        name: String,
        rate_limit_per_minute: Option<u32>,
    },
    /// A tenant was renamed.
    #[serde(rename_all = "camelCase")]
    TenantRenamed { id: TenantId, name: String },
    /// A tenant was suspended: its credentials stop working.
    #[serde(rename_all = "camelCase")]
    TenantSuspended { id: TenantId },
    /// A suspended tenant was reactivated.
    #[serde(rename_all = "camelCase")]
    TenantReactivated { id: TenantId },
    /// A tenant's request rate limit was changed (null: the default).
    #[serde(rename_all = "camelCase")]
    TenantRateLimitChanged {
        id: TenantId,
        rate_limit_per_minute: Option<u32>,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TenantCreated { .. } => "TenantCreated",
            Self::TenantRenamed { .. } => "TenantRenamed",
            Self::TenantSuspended { .. } => "TenantSuspended",
            Self::TenantReactivated { .. } => "TenantReactivated",
            Self::TenantRateLimitChanged { .. } => "TenantRateLimitChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for TenantEvent {
    const VERSION: &'static str = "1.0";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("a tenant with this id already exists")]
    AlreadyExists,
    #[error("no such tenant")]
    NotFound,
    #[error("the name must be 1 to {MAX_NAME_LEN} characters and not blank")]
    InvalidName,
    #[error("the rate limit must be at least 1 request per minute")]
    InvalidRateLimit,
    #[error("this tenant id is reserved")]
    ReservedId,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    id: Option<TenantId>,
    name: String,
    status: TenantStatus,
    rate_limit_per_minute: Option<u32>,
}

impl Tenant {
    pub fn id(&self) -> Option<&TenantId> {
        self.id.as_ref()
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn status(&self) -> TenantStatus {
        self.status
    }
    pub fn rate_limit_per_minute(&self) -> Option<u32> {
        self.rate_limit_per_minute
    }
}

fn valid_name(name: &str) -> Result<String, TenantError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > MAX_NAME_LEN {
        return Err(TenantError::InvalidName);
    }
    Ok(trimmed.to_string())
}

fn valid_rate_limit(limit: Option<u32>) -> Result<Option<u32>, TenantError> {
    match limit {
        Some(0) => Err(TenantError::InvalidRateLimit),
        other => Ok(other),
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "Tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            TenantCommand::CreateTenant {
                id,
                name,
                rate_limit_per_minute,
            } => {
                if self.id.is_some() {
                    return Err(TenantError::AlreadyExists);
                }
                if id.as_str() == crate::api_key::PLATFORM_TENANT {
                    return Err(TenantError::ReservedId);
                }
                let event = TenantEvent::TenantCreated {
                    id,
                    name: valid_name(&name)?,
                    rate_limit_per_minute: valid_rate_limit(rate_limit_per_minute)?,
                };
                sink.write(event, self).await;
            }
            TenantCommand::UpdateTenant {
                name,
                status,
                rate_limit_per_minute,
            } => {
                let id = self.id.clone().ok_or(TenantError::NotFound)?;
                // Validate everything before recording anything.
                let name = name.as_deref().map(valid_name).transpose()?;
                let rate_limit = rate_limit_per_minute.map(valid_rate_limit).transpose()?;
                if let Some(name) = name.filter(|name| *name != self.name) {
                    sink.write(
                        TenantEvent::TenantRenamed {
                            id: id.clone(),
                            name,
                        },
                        self,
                    )
                    .await;
                }
                match status {
                    Some(TenantStatus::Suspended) if self.status == TenantStatus::Active => {
                        sink.write(TenantEvent::TenantSuspended { id: id.clone() }, self)
                            .await;
                    }
                    Some(TenantStatus::Active) if self.status == TenantStatus::Suspended => {
                        sink.write(TenantEvent::TenantReactivated { id: id.clone() }, self)
                            .await;
                    }
                    _ => {}
                }
                if let Some(limit) = rate_limit.filter(|limit| *limit != self.rate_limit_per_minute)
                {
                    let event = TenantEvent::TenantRateLimitChanged {
                        id,
                        rate_limit_per_minute: limit,
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TenantEvent::TenantCreated {
                id,
                name,
                rate_limit_per_minute,
            } => {
                self.id = Some(id);
                self.name = name;
                self.rate_limit_per_minute = rate_limit_per_minute;
            }
            TenantEvent::TenantRenamed { name, .. } => self.name = name,
            TenantEvent::TenantSuspended { .. } => self.status = TenantStatus::Suspended,
            TenantEvent::TenantReactivated { .. } => self.status = TenantStatus::Active,
            TenantEvent::TenantRateLimitChanged {
                rate_limit_per_minute,
                ..
            } => self.rate_limit_per_minute = rate_limit_per_minute,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn acme() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn created() -> TenantEvent {
        TenantEvent::TenantCreated {
            id: acme(),
            name: "Acme".into(),
            rate_limit_per_minute: None,
        }
    }

    #[test]
    fn a_tenant_is_created_with_a_trimmed_name() {
        TestFramework::<Tenant>::with(())
            .given_no_previous_events()
            .when(TenantCommand::CreateTenant {
                id: acme(),
                name: "  Acme ".into(),
                rate_limit_per_minute: None,
            })
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn a_blank_name_is_refused() {
        TestFramework::<Tenant>::with(())
            .given_no_previous_events()
            .when(TenantCommand::CreateTenant {
                id: acme(),
                name: "   ".into(),
                rate_limit_per_minute: None,
            })
            .then_expect_error(TenantError::InvalidName);
    }

    #[test]
    fn suspending_records_one_event_and_suspending_again_records_none() {
        let suspend = TenantCommand::UpdateTenant {
            name: None,
            status: Some(TenantStatus::Suspended),
            rate_limit_per_minute: None,
        };
        TestFramework::<Tenant>::with(())
            .given(vec![created()])
            .when(suspend.clone())
            .then_expect_events(vec![TenantEvent::TenantSuspended { id: acme() }]);
        TestFramework::<Tenant>::with(())
            .given(vec![created(), TenantEvent::TenantSuspended { id: acme() }])
            .when(suspend)
            .then_expect_events(vec![]);
    }

    #[test]
    fn one_update_can_rename_reactivate_and_change_the_limit() {
        TestFramework::<Tenant>::with(())
            .given(vec![created(), TenantEvent::TenantSuspended { id: acme() }])
            .when(TenantCommand::UpdateTenant {
                name: Some("Acme Corp".into()),
                status: Some(TenantStatus::Active),
                rate_limit_per_minute: Some(Some(600)),
            })
            .then_expect_events(vec![
                TenantEvent::TenantRenamed {
                    id: acme(),
                    name: "Acme Corp".into(),
                },
                TenantEvent::TenantReactivated { id: acme() },
                TenantEvent::TenantRateLimitChanged {
                    id: acme(),
                    rate_limit_per_minute: Some(600),
                },
            ]);
    }

    #[test]
    fn an_invalid_part_of_an_update_records_nothing() {
        TestFramework::<Tenant>::with(())
            .given(vec![created()])
            .when(TenantCommand::UpdateTenant {
                name: Some("Renamed".into()),
                status: None,
                rate_limit_per_minute: Some(Some(0)),
            })
            .then_expect_error(TenantError::InvalidRateLimit);
    }

    #[test]
    fn updating_a_missing_tenant_is_not_found() {
        TestFramework::<Tenant>::with(())
            .given_no_previous_events()
            .when(TenantCommand::UpdateTenant {
                name: Some("x".into()),
                status: None,
                rate_limit_per_minute: None,
            })
            .then_expect_error(TenantError::NotFound);
    }
}
