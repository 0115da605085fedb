//! The generic entity: one aggregate per record of a tenant-defined entity type.
//!
//! The aggregate protects four rules: a record is created once, a deleted record cannot be
//! changed, a command that names the version it expects (`If-Match`) is refused when the
//! record has moved on, and every document the record takes satisfies its type's schema
//! (which the command carries, as the type's aggregate decided it). Rules that span records
//! (unique values, references) live in [`crate::constraints`].

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::entity_type::{FieldViolation, SYSTEM_FIELDS, Schema};
use crate::merge_patch;
use crate::names::{EntityId, EntityTypeName};

/// What a client may ask of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum EntityCommand {
    CreateEntity {
        entity_type: EntityTypeName,
        id: EntityId,
        data: Map<String, Value>,
        schema: Schema,
    },
    /// Apply a JSON merge patch to the record's document.
    UpdateEntity {
        patch: Map<String, Value>,
        expected_version: Option<u64>,
        schema: Schema,
    },
    /// Replace the record's document.
    ReplaceEntity {
        data: Map<String, Value>,
        expected_version: Option<u64>,
        schema: Schema,
    },
    DeleteEntity {
        expected_version: Option<u64>,
    },
}

impl EntityCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateEntity { .. } => "CreateEntity",
            Self::UpdateEntity { .. } => "UpdateEntity",
            Self::ReplaceEntity { .. } => "ReplaceEntity",
            Self::DeleteEntity { .. } => "DeleteEntity",
        }
    }
}

/// What happened to a record. Payloads are self-contained: a projection never needs an earlier
/// event to apply a later one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EntityEvent {
    /// A record was created.
    #[serde(rename_all = "camelCase")]
    EntityCreated {
        entity_type: EntityTypeName,
        id: EntityId,
        data: Map<String, Value>,
    },
    /// A record was changed by a merge patch.
    #[serde(rename_all = "camelCase")]
    EntityUpdated {
        entity_type: EntityTypeName,
        id: EntityId,
        /// The merge patch the client sent: what changed.
        patch: Map<String, Value>,
        /// The whole document after the patch.
        data: Map<String, Value>,
    },
    /// A record was replaced by a whole new document.
    #[serde(rename_all = "camelCase")]
    EntityReplaced {
        entity_type: EntityTypeName,
        id: EntityId,
        /// The whole new document.
        data: Map<String, Value>,
    },
    /// A record was deleted.
    #[serde(rename_all = "camelCase")]
    EntityDeleted {
        entity_type: EntityTypeName,
        id: EntityId,
    },
}

impl DomainEvent for EntityEvent {
    fn event_type(&self) -> String {
        match self {
            Self::EntityCreated { .. } => "EntityCreated",
            Self::EntityUpdated { .. } => "EntityUpdated",
            Self::EntityReplaced { .. } => "EntityReplaced",
            Self::EntityDeleted { .. } => "EntityDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for EntityEvent {
    const VERSION: &'static str = "1.0";
}

/// Why a command on a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntityError {
    #[error("a record with this id already exists")]
    AlreadyExists,
    #[error("no such record")]
    NotFound,
    #[error("the record was modified: expected version {expected}, current version {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("field '{0}' is managed by the gateway and cannot be written")]
    SystemField(String),
    #[error("the document does not satisfy the entity type's schema")]
    Invalid(Vec<FieldViolation>),
}

/// The state of one record, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    entity_type: Option<EntityTypeName>,
    id: Option<EntityId>,
    data: Map<String, Value>,
    deleted: bool,
    /// The number of events applied so far, which is the record's version.
    version: u64,
}

impl Entity {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }

    pub fn exists(&self) -> bool {
        self.id.is_some() && !self.deleted
    }

    pub fn entity_type(&self) -> Option<&EntityTypeName> {
        self.entity_type.as_ref()
    }

    fn identity(&self) -> Result<(EntityTypeName, EntityId), EntityError> {
        match (&self.entity_type, &self.id) {
            (Some(entity_type), Some(id)) if !self.deleted => Ok((entity_type.clone(), id.clone())),
            _ => Err(EntityError::NotFound),
        }
    }

    fn check_version(&self, expected: Option<u64>) -> Result<(), EntityError> {
        match expected {
            Some(expected) if expected != self.version => Err(EntityError::VersionConflict {
                expected,
                actual: self.version,
            }),
            _ => Ok(()),
        }
    }
}

fn reject_system_fields(data: &Map<String, Value>) -> Result<(), EntityError> {
    match SYSTEM_FIELDS
        .iter()
        .find(|field| data.contains_key(**field))
    {
        Some(field) => Err(EntityError::SystemField((*field).to_string())),
        None => Ok(()),
    }
}

/// Checks `data` against `schema` and, for a record that exists, that its key fields keep
/// their values.
fn validate(
    schema: &Schema,
    before: Option<&Map<String, Value>>,
    data: &mut Map<String, Value>,
) -> Result<(), EntityError> {
    reject_system_fields(data)?;
    let mut problems = schema.validate(data);
    if let Some(before) = before {
        for key in &schema.key {
            if before.get(key) != data.get(key) && !problems.iter().any(|p| p.field == *key) {
                problems.push(FieldViolation::new(
                    key.clone(),
                    "is part of the record's id and cannot change",
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EntityError::Invalid(problems))
    }
}

impl Aggregate for Entity {
    const TYPE: &'static str = "Entity";
    type Command = EntityCommand;
    type Event = EntityEvent;
    type Error = EntityError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            EntityCommand::CreateEntity {
                entity_type,
                id,
                mut data,
                schema,
            } => {
                if self.id.is_some() {
                    return Err(EntityError::AlreadyExists);
                }
                validate(&schema, None, &mut data)?;
                let event = EntityEvent::EntityCreated {
                    entity_type,
                    id,
                    data,
                };
                sink.write(event, self).await;
            }
            EntityCommand::UpdateEntity {
                patch,
                expected_version,
                schema,
            } => {
                let (entity_type, id) = self.identity()?;
                self.check_version(expected_version)?;
                reject_system_fields(&patch)?;
                let mut document = Value::Object(self.data.clone());
                merge_patch::apply(&mut document, &Value::Object(patch.clone()));
                let Value::Object(mut data) = document else {
                    unreachable!("an object patched with an object stays an object");
                };
                validate(&schema, Some(&self.data), &mut data)?;
                if data == self.data {
                    // Nothing changes: record nothing, so that retries and no-op PATCHes do
                    // not grow the log.
                    return Ok(());
                }
                let event = EntityEvent::EntityUpdated {
                    entity_type,
                    id,
                    patch,
                    data,
                };
                sink.write(event, self).await;
            }
            EntityCommand::ReplaceEntity {
                mut data,
                expected_version,
                schema,
            } => {
                let (entity_type, id) = self.identity()?;
                self.check_version(expected_version)?;
                validate(&schema, Some(&self.data), &mut data)?;
                if data == self.data {
                    return Ok(());
                }
                let event = EntityEvent::EntityReplaced {
                    entity_type,
                    id,
                    data,
                };
                sink.write(event, self).await;
            }
            EntityCommand::DeleteEntity { expected_version } => {
                let (entity_type, id) = self.identity()?;
                self.check_version(expected_version)?;
                sink.write(EntityEvent::EntityDeleted { entity_type, id }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            EntityEvent::EntityCreated {
                entity_type,
                id,
                data,
            } => {
                self.entity_type = Some(entity_type);
                self.id = Some(id);
                self.data = data;
            }
            EntityEvent::EntityUpdated { data, .. } | EntityEvent::EntityReplaced { data, .. } => {
                self.data = data
            }
            EntityEvent::EntityDeleted { .. } => self.deleted = true,
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

    fn user_1() -> EntityId {
        EntityId::parse("user-1").unwrap()
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn created() -> EntityEvent {
        EntityEvent::EntityCreated {
            entity_type: users(),
            id: user_1(),
            data: object(json!({"name": "Ada", "team": "core"})),
        }
    }

    #[test]
    fn creating_a_new_record_records_entity_created() {
        TestFramework::<Entity>::with(())
            .given_no_previous_events()
            .when(EntityCommand::CreateEntity {
                entity_type: users(),
                id: user_1(),
                data: object(json!({"name": "Ada", "team": "core"})),
                schema: Schema::open(),
            })
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn creating_a_record_twice_is_refused() {
        TestFramework::<Entity>::with(())
            .given(vec![created()])
            .when(EntityCommand::CreateEntity {
                entity_type: users(),
                id: user_1(),
                data: Map::new(),
                schema: Schema::open(),
            })
            .then_expect_error(EntityError::AlreadyExists);
    }

    #[test]
    fn creating_a_deleted_record_again_is_refused() {
        TestFramework::<Entity>::with(())
            .given(vec![
                created(),
                EntityEvent::EntityDeleted {
                    entity_type: users(),
                    id: user_1(),
                },
            ])
            .when(EntityCommand::CreateEntity {
                entity_type: users(),
                id: user_1(),
                data: Map::new(),
                schema: Schema::open(),
            })
            .then_expect_error(EntityError::AlreadyExists);
    }

    #[test]
    fn a_patch_records_the_patch_and_the_resulting_document() {
        TestFramework::<Entity>::with(())
            .given(vec![created()])
            .when(EntityCommand::UpdateEntity {
                patch: object(json!({"team": null, "age": 36})),
                expected_version: Some(1),
                schema: Schema::open(),
            })
            .then_expect_events(vec![EntityEvent::EntityUpdated {
                entity_type: users(),
                id: user_1(),
                patch: object(json!({"team": null, "age": 36})),
                data: object(json!({"name": "Ada", "age": 36})),
            }]);
    }

    #[test]
    fn a_patch_that_changes_nothing_records_nothing() {
        TestFramework::<Entity>::with(())
            .given(vec![created()])
            .when(EntityCommand::UpdateEntity {
                patch: object(json!({"name": "Ada"})),
                expected_version: None,
                schema: Schema::open(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_stale_expected_version_is_a_version_conflict() {
        TestFramework::<Entity>::with(())
            .given(vec![created()])
            .when(EntityCommand::UpdateEntity {
                patch: object(json!({"name": "Grace"})),
                expected_version: Some(0),
                schema: Schema::open(),
            })
            .then_expect_error(EntityError::VersionConflict {
                expected: 0,
                actual: 1,
            });
    }

    #[test]
    fn updating_a_missing_record_is_not_found() {
        TestFramework::<Entity>::with(())
            .given_no_previous_events()
            .when(EntityCommand::UpdateEntity {
                patch: object(json!({"name": "Grace"})),
                expected_version: None,
                schema: Schema::open(),
            })
            .then_expect_error(EntityError::NotFound);
    }

    #[test]
    fn a_deleted_record_cannot_be_deleted_again() {
        TestFramework::<Entity>::with(())
            .given(vec![
                created(),
                EntityEvent::EntityDeleted {
                    entity_type: users(),
                    id: user_1(),
                },
            ])
            .when(EntityCommand::DeleteEntity {
                expected_version: None,
            })
            .then_expect_error(EntityError::NotFound);
    }

    #[test]
    fn the_id_field_cannot_be_written_through_the_document() {
        TestFramework::<Entity>::with(())
            .given(vec![created()])
            .when(EntityCommand::UpdateEntity {
                patch: object(json!({"id": "other"})),
                expected_version: None,
                schema: Schema::open(),
            })
            .then_expect_error(EntityError::SystemField("id".into()));
    }

    #[test]
    fn events_serialize_with_camel_case_fields() {
        let value = serde_json::to_value(EntityEvent::EntityCreated {
            entity_type: users(),
            id: user_1(),
            data: Map::new(),
        })
        .unwrap();
        assert_eq!(
            value,
            json!({"EntityCreated": {"entityType": "users", "id": "user-1", "data": {}}})
        );
    }
}
