//! Roles a principal can hold, and what each grants.
//!
//! | Role | Grants |
//! | --- | --- |
//! | `superadmin` | platform routes (tenants); no tenant's data |
//! | `admin` | everything in its tenant: keys, entity types, agents, commands, queries, usage |
//! | `writer` | commands and queries |
//! | `reader` | queries |
//! | `analyst` | usage queries |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One role.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Superadmin,
    Admin,
    Writer,
    Reader,
    Analyst,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Superadmin,
        Role::Admin,
        Role::Writer,
        Role::Reader,
        Role::Analyst,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Superadmin => "superadmin",
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Analyst => "analyst",
        }
    }

    /// Whether holding `self` is enough for a route that requires `required`.
    pub fn grants(self, required: Role) -> bool {
        use Role::*;
        match self {
            Superadmin => required == Superadmin,
            Admin => required != Superadmin,
            Writer => matches!(required, Writer | Reader),
            Reader => required == Reader,
            Analyst => required == Analyst,
        }
    }

    /// Whether any of `roles` grants `required`.
    pub fn any_grants(roles: &[Role], required: Role) -> bool {
        roles.iter().any(|role| role.grants(required))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role '{0}' (known: superadmin, admin, writer, reader, analyst)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::Role::*;
    use super::*;

    #[test]
    fn admin_grants_every_tenant_role_but_not_superadmin() {
        for role in [Admin, Writer, Reader, Analyst] {
            assert!(Admin.grants(role));
        }
        assert!(!Admin.grants(Superadmin));
    }

    #[test]
    fn superadmin_grants_no_tenant_role() {
        for role in [Admin, Writer, Reader, Analyst] {
            assert!(!Superadmin.grants(role));
        }
    }

    #[test]
    fn writers_read_but_readers_do_not_write_and_analysts_only_analyse() {
        assert!(Writer.grants(Reader));
        assert!(!Reader.grants(Writer));
        assert!(!Analyst.grants(Reader));
        assert!(!Reader.grants(Analyst));
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
