//! Who may read which events outside the gateway, and which of their fields never leave it.
//!
//! Events reach readers through the change feed (`GET /v1/events`), the live stream and NATS.
//! Each aggregate's events are readable by the role that may read the aggregate's own routes:
//!
//! | Aggregate | Events | Role | Internal fields (never published) |
//! | --- | --- | --- | --- |
//! | `Entity`, `EntityType`, `UniqueValue`, `References` | records, their types and rules | `reader` | |
//! | `Agent`, `Session` | agents, sessions, messages, replies, provider calls | `reader` | |
//! | `Budget` | budgets set, changed, removed; thresholds crossed | `analyst` | |
//! | `ApiKey` | keys issued and revoked | `admin` | `secretHash` |
//! | `Tenant` | tenants created, renamed, suspended, limits | `admin` | |
//!
//! An aggregate type not in this table is readable by `admin` only: what is not declared is
//! not published to readers. On NATS, events whose role is not `reader` go to a subject prefix
//! of their own, so subscribers opt in to them.

use crate::roles::Role;

/// Who may read an event, and what of it stays inside the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    /// The role that may read the event (as routes grant roles: `admin` reads everything).
    pub role: Role,
    /// Payload fields that are removed before the event leaves the gateway.
    pub internal_fields: &'static [&'static str],
}

impl Visibility {
    /// Whether every reader of the tenant may see the event.
    pub fn is_public(self) -> bool {
        self.role == Role::Reader
    }

    /// Whether a principal holding `roles` may read the event.
    pub fn readable_by(self, roles: &[Role]) -> bool {
        Role::any_grants(roles, self.role)
    }
}

const READER: Visibility = Visibility {
    role: Role::Reader,
    internal_fields: &[],
};

/// The visibility of events of `event_type` on an aggregate of `aggregate_type`.
pub fn of(aggregate_type: &str, event_type: &str) -> Visibility {
    match (aggregate_type, event_type) {
        (
            "Entity" | "EntityType" | "UniqueValue" | "References" | "Links" | "Agent" | "Session",
            _,
        ) => READER,
        ("Budget", _) => Visibility {
            role: Role::Analyst,
            internal_fields: &[],
        },
        ("ApiKey", "ApiKeyIssued") => Visibility {
            role: Role::Admin,
            internal_fields: &["secretHash"],
        },
        _ => Visibility {
            role: Role::Admin,
            internal_fields: &[],
        },
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::Aggregate;

    use super::*;

    #[test]
    fn every_aggregate_is_declared_and_keys_keep_their_hash() {
        for aggregate in [
            crate::entity::Entity::TYPE,
            crate::entity_type::EntityType::TYPE,
            crate::constraints::UniqueValue::TYPE,
            crate::constraints::References::TYPE,
            crate::relation::Links::TYPE,
            crate::agent::Agent::TYPE,
            crate::session::Session::TYPE,
        ] {
            assert!(of(aggregate, "Any").is_public(), "{aggregate}");
        }
        assert_eq!(
            of(crate::budget::Budget::TYPE, "BudgetSet").role,
            Role::Analyst
        );
        assert_eq!(
            of(crate::tenant::Tenant::TYPE, "TenantCreated").role,
            Role::Admin
        );
        let issued = of(crate::api_key::ApiKey::TYPE, "ApiKeyIssued");
        assert_eq!(issued.role, Role::Admin);
        assert_eq!(issued.internal_fields, ["secretHash"]);
        assert_eq!(
            of("SomethingNew", "Happened").role,
            Role::Admin,
            "default deny"
        );
        assert!(!of("Budget", "BudgetSet").readable_by(&[Role::Reader]));
        assert!(of("Budget", "BudgetSet").readable_by(&[Role::Reader, Role::Analyst]));
        assert!(of("ApiKey", "ApiKeyRevoked").readable_by(&[Role::Admin]));
    }
}
