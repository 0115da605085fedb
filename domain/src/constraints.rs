//! Rules that span records, kept by aggregates of their own so that the event log's
//! optimistic concurrency enforces them: two commits that touch the same rule write to the
//! same stream, and the second one is decided again on the first one's outcome.
//!
//! - [`UniqueValue`]: one stream per (entity type, field, value). A record that takes a value
//!   of a unique field claims it in the same commit as its own event; a record that gives it
//!   up (change or delete) releases it.
//! - [`References`]: one stream per referenced record, listing the records that reference it.
//!   Referencing a record adds to its list; deleting it closes the list, which is refused while
//!   the list is not empty (the gateway first nullifies or refuses, per the field's
//!   `onDelete`), and a closed list takes no new references. Relations that point at a
//!   record are listed there too ([`crate::relation`]), so the same close guards them.

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{EntityId, EntityTypeName};

/// What a record may ask of a unique value.
#[derive(Debug, Clone, PartialEq)]
pub enum UniqueValueCommand {
    Claim {
        entity_type: EntityTypeName,
        field: String,
        value: Value,
        owner: EntityId,
    },
    Release {
        owner: EntityId,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum UniqueValueEvent {
    /// A record took a value of a unique field.
    #[serde(rename_all = "camelCase")]
    UniqueValueClaimed {
        entity_type: EntityTypeName,
        field: String,
        value: Value,
        owner: EntityId,
    },
    /// A record gave up a value of a unique field (changed or deleted).
    #[serde(rename_all = "camelCase")]
    UniqueValueReleased {
        entity_type: EntityTypeName,
        field: String,
        value: Value,
        owner: EntityId,
    },
}

impl DomainEvent for UniqueValueEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UniqueValueClaimed { .. } => "UniqueValueClaimed",
            Self::UniqueValueReleased { .. } => "UniqueValueReleased",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for UniqueValueEvent {
    const VERSION: &'static str = "1.0";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UniqueValueError {
    #[error("the value is already held by record '{owner}'")]
    Taken { owner: EntityId },
}

/// Who holds one value of a unique field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UniqueValue {
    claimed: Option<(EntityTypeName, String, Value)>,
    owner: Option<EntityId>,
}

impl UniqueValue {
    pub fn owner(&self) -> Option<&EntityId> {
        self.owner.as_ref()
    }
}

impl Aggregate for UniqueValue {
    const TYPE: &'static str = "UniqueValue";
    type Command = UniqueValueCommand;
    type Event = UniqueValueEvent;
    type Error = UniqueValueError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            UniqueValueCommand::Claim {
                entity_type,
                field,
                value,
                owner,
            } => match &self.owner {
                Some(current) if *current == owner => {}
                Some(current) => {
                    return Err(UniqueValueError::Taken {
                        owner: current.clone(),
                    });
                }
                None => {
                    let event = UniqueValueEvent::UniqueValueClaimed {
                        entity_type,
                        field,
                        value,
                        owner,
                    };
                    sink.write(event, self).await;
                }
            },
            UniqueValueCommand::Release { owner } => {
                if self.owner.as_ref() == Some(&owner)
                    && let Some((entity_type, field, value)) = self.claimed.clone()
                {
                    let event = UniqueValueEvent::UniqueValueReleased {
                        entity_type,
                        field,
                        value,
                        owner,
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UniqueValueEvent::UniqueValueClaimed {
                entity_type,
                field,
                value,
                owner,
            } => {
                self.claimed = Some((entity_type, field, value));
                self.owner = Some(owner);
            }
            UniqueValueEvent::UniqueValueReleased { .. } => self.owner = None,
        }
    }
}

/// One referencing record: its type, id and the field that holds the reference, or, with
/// `relation`, the name of the relation that links it (see [`crate::relation`]).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    pub entity_type: EntityTypeName,
    pub id: EntityId,
    pub field: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub relation: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReferencesCommand {
    /// `referrer` now references the record. The caller has checked that the record exists.
    Add {
        target_type: EntityTypeName,
        target_id: EntityId,
        referrer: Referrer,
    },
    Remove {
        referrer: Referrer,
    },
    /// The record is being deleted.
    Close {
        target_type: EntityTypeName,
        target_id: EntityId,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ReferencesEvent {
    /// A record started referring to the target record (by a reference field or a relation).
    #[serde(rename_all = "camelCase")]
    ReferenceAdded {
        target_type: EntityTypeName,
        target_id: EntityId,
        referrer: Referrer,
    },
    /// A record stopped referring to the target record.
    #[serde(rename_all = "camelCase")]
    ReferenceRemoved {
        target_type: EntityTypeName,
        target_id: EntityId,
        referrer: Referrer,
    },
    /// The target record was deleted: no record may refer to it any more.
    #[serde(rename_all = "camelCase")]
    ReferencesClosed {
        target_type: EntityTypeName,
        target_id: EntityId,
    },
}

impl DomainEvent for ReferencesEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ReferenceAdded { .. } => "ReferenceAdded",
            Self::ReferenceRemoved { .. } => "ReferenceRemoved",
            Self::ReferencesClosed { .. } => "ReferencesClosed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for ReferencesEvent {
    const VERSION: &'static str = "1.0";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferencesError {
    #[error("the referenced record has been deleted")]
    TargetDeleted,
    #[error("the record is still referenced")]
    StillReferenced(Vec<Referrer>),
}

/// The records that reference one record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct References {
    target: Option<(EntityTypeName, EntityId)>,
    referrers: BTreeSet<Referrer>,
    closed: bool,
}

impl References {
    pub fn referrers(&self) -> &BTreeSet<Referrer> {
        &self.referrers
    }
}

impl Aggregate for References {
    const TYPE: &'static str = "References";
    type Command = ReferencesCommand;
    type Event = ReferencesEvent;
    type Error = ReferencesError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ReferencesCommand::Add {
                target_type,
                target_id,
                referrer,
            } => {
                if self.closed {
                    return Err(ReferencesError::TargetDeleted);
                }
                if !self.referrers.contains(&referrer) {
                    let event = ReferencesEvent::ReferenceAdded {
                        target_type,
                        target_id,
                        referrer,
                    };
                    sink.write(event, self).await;
                }
            }
            ReferencesCommand::Remove { referrer } => {
                if self.referrers.contains(&referrer)
                    && let Some((target_type, target_id)) = self.target.clone()
                {
                    let event = ReferencesEvent::ReferenceRemoved {
                        target_type,
                        target_id,
                        referrer,
                    };
                    sink.write(event, self).await;
                }
            }
            ReferencesCommand::Close {
                target_type,
                target_id,
            } => {
                if !self.referrers.is_empty() {
                    return Err(ReferencesError::StillReferenced(
                        self.referrers.iter().cloned().collect(),
                    ));
                }
                if !self.closed {
                    let event = ReferencesEvent::ReferencesClosed {
                        target_type,
                        target_id,
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ReferencesEvent::ReferenceAdded {
                target_type,
                target_id,
                referrer,
            } => {
                self.target = Some((target_type, target_id));
                self.referrers.insert(referrer);
            }
            ReferencesEvent::ReferenceRemoved { referrer, .. } => {
                self.referrers.remove(&referrer);
            }
            ReferencesEvent::ReferencesClosed {
                target_type,
                target_id,
            } => {
                self.target = Some((target_type, target_id));
                self.closed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    use super::*;

    fn users() -> EntityTypeName {
        EntityTypeName::parse("users").unwrap()
    }

    fn id(s: &str) -> EntityId {
        EntityId::parse(s).unwrap()
    }

    fn claimed(owner: &str) -> UniqueValueEvent {
        UniqueValueEvent::UniqueValueClaimed {
            entity_type: users(),
            field: "email".into(),
            value: json!("a@b.c"),
            owner: id(owner),
        }
    }

    fn claim(owner: &str) -> UniqueValueCommand {
        UniqueValueCommand::Claim {
            entity_type: users(),
            field: "email".into(),
            value: json!("a@b.c"),
            owner: id(owner),
        }
    }

    #[test]
    fn a_held_value_cannot_be_claimed_by_another_record() {
        TestFramework::<UniqueValue>::with(())
            .given(vec![claimed("u1")])
            .when(claim("u2"))
            .then_expect_error(UniqueValueError::Taken { owner: id("u1") });
    }

    #[test]
    fn a_released_value_can_be_claimed_again() {
        let released = UniqueValueEvent::UniqueValueReleased {
            entity_type: users(),
            field: "email".into(),
            value: json!("a@b.c"),
            owner: id("u1"),
        };
        TestFramework::<UniqueValue>::with(())
            .given(vec![claimed("u1"), released])
            .when(claim("u2"))
            .then_expect_events(vec![claimed("u2")]);
    }

    fn referrer() -> Referrer {
        Referrer {
            entity_type: EntityTypeName::parse("orders").unwrap(),
            id: id("o1"),
            field: "user".into(),
            relation: false,
        }
    }

    #[test]
    fn a_referenced_record_cannot_be_closed_and_a_closed_one_takes_no_reference() {
        let added = ReferencesEvent::ReferenceAdded {
            target_type: users(),
            target_id: id("u1"),
            referrer: referrer(),
        };
        TestFramework::<References>::with(())
            .given(vec![added])
            .when(ReferencesCommand::Close {
                target_type: users(),
                target_id: id("u1"),
            })
            .then_expect_error(ReferencesError::StillReferenced(vec![referrer()]));
        TestFramework::<References>::with(())
            .given(vec![ReferencesEvent::ReferencesClosed {
                target_type: users(),
                target_id: id("u1"),
            }])
            .when(ReferencesCommand::Add {
                target_type: users(),
                target_id: id("u1"),
                referrer: referrer(),
            })
            .then_expect_error(ReferencesError::TargetDeleted);
    }
}
