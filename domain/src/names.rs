//! Validated identifiers that come from the outside world: tenant ids, entity type names and
//! record ids. Parsing them once, at the edge, means the rest of the code can rely on them
//! being well formed (for example, safe to use as a NATS subject token or a URL segment).
//! Each holds its string shared (`Arc<str>`): a command's tenant, type and id are copied into
//! its streams, events, metadata and answer, and each copy is a reference count.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters long")]
    TooLong { max: usize },
    #[error("{0}")]
    Invalid(&'static str),
    #[error("'{0}' is reserved for a built-in resource")]
    Reserved(String),
}

fn check_len(value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty);
    }
    if value.chars().count() > max {
        return Err(NameError::TooLong { max });
    }
    Ok(())
}

/// A tenant identifier: 1 to 64 ASCII letters, digits, `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String")]
#[schema(value_type = String)]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        Self::check(&value)?;
        Ok(Self(value.into()))
    }

    /// Whether `value` is a tenant id ([`TenantId::parse`] without making one).
    pub fn is_valid(value: &str) -> bool {
        Self::check(value).is_ok()
    }

    fn check(value: &str) -> Result<(), NameError> {
        check_len(value, Self::MAX_LEN)?;
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(NameError::Invalid(
                "may contain only ASCII letters, digits, '-' and '_'",
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Names of the gateway's built-in resources. A tenant may not define an entity type with one
/// of these names, because `/v1/<name>` already means something else.
pub const RESERVED_ENTITY_TYPES: &[&str] = &[
    "agents",
    "api-keys",
    "budgets",
    "entity-types",
    "events",
    "health",
    "me",
    "metrics",
    "openapi",
    "ready",
    "sessions",
    "tenants",
    "usage",
];

/// The plural, URL-safe name of an entity type (`users`, `agent-shared-states`): a lower-case
/// ASCII letter followed by up to 62 lower-case letters, digits or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String")]
#[schema(value_type = String)]
pub struct EntityTypeName(Arc<str>);

impl EntityTypeName {
    pub const MAX_LEN: usize = 63;

    /// Parses a name a client wants to use: well formed and not reserved.
    pub fn parse(value: impl Into<String>) -> Result<Self, NameError> {
        let name = Self::parse_stored(value)?;
        if RESERVED_ENTITY_TYPES.contains(&name.as_str()) {
            return Err(NameError::Reserved(name.0.to_string()));
        }
        Ok(name)
    }

    /// Parses a name read back from the event log. Only the format is checked: a name that
    /// became reserved after it was used must still load.
    pub fn parse_stored(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        check_len(&value, Self::MAX_LEN)?;
        let mut bytes = value.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        if !first_ok || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(NameError::Invalid(
                "must start with a lower-case letter and contain only lower-case letters, digits and '-'",
            ));
        }
        Ok(Self(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of one record of an entity type: 1 to 255 printable characters without `/`
/// (composite keys join their parts with `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String")]
#[schema(value_type = String)]
pub struct EntityId(Arc<str>);

impl EntityId {
    pub const MAX_LEN: usize = 255;

    pub fn parse(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        check_len(&value, Self::MAX_LEN)?;
        if value
            .chars()
            .any(|c| c.is_control() || c == '/' || c.is_whitespace())
        {
            return Err(NameError::Invalid(
                "must not contain '/', white space or control characters",
            ));
        }
        Ok(Self(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($($name:ident => $parse:ident),*) => {$(
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::$parse(value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0.to_string()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        /// Written as its string, without a copy of it.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    )*};
}
string_newtype_impls!(
    TenantId => parse,
    EntityTypeName => parse_stored,
    EntityId => parse
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_refuse_subject_wildcards_and_dots() {
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(TenantId::parse("tenant-01_A").is_ok());
    }

    #[test]
    fn entity_type_names_are_lower_case_plural_words() {
        assert!(EntityTypeName::parse("agent-shared-states").is_ok());
        assert!(EntityTypeName::parse("Users").is_err());
        assert!(EntityTypeName::parse("1users").is_err());
        assert!(EntityTypeName::parse("users_x").is_err());
        assert_eq!(
            EntityTypeName::parse("agents"),
            Err(NameError::Reserved("agents".into()))
        );
    }

    #[test]
    fn entity_ids_allow_composite_keys_but_not_slashes() {
        assert!(EntityId::parse("agent-name:user-1:conv-1").is_ok());
        assert!(EntityId::parse("a/b").is_err());
        assert!(EntityId::parse("a b").is_err());
        assert!(EntityId::parse("x".repeat(256)).is_err());
    }
}
