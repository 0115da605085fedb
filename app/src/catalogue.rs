//! Catalogues of entity types: a set of types applied to a tenant in one commit.
//!
//! The gateway ships the `panorama` catalogue, seed 000's entities (`users`, `conversations`,
//! `messages` and `agent-shared-states`, whose id is its composite key `agentName:userId:
//! conversationId`), so that clients written for seed 000 work after one command. A tenant's
//! own types export in the same shape ([`export`]), and an export imports elsewhere as is.
//!
//! An import is idempotent: a type that does not exist is defined, one whose schema differs
//! is changed (refused, like any change, when records written under the current schema might
//! not satisfy the new one), and one that is already equal is left alone. All of it commits
//! together, or nothing does.

use domain::entity_type::{EntityType, EntityTypeCommand, Schema};
use domain::metadata::EventMetadata;
use domain::names::{EntityTypeName, TenantId};
use eventlog::group_commit::{CommitError, KeyUse};
use eventlog::idempotency::{IdempotencyKey, StoredResponse};
use eventlog::unit_of_work::UnitOfWork;
use eventlog::{CommandError, Cursor, EventLog};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::Context;
use crate::entity_writes::type_stream;
use crate::error::{Error, FieldError};
use crate::idempotency::{self, Claimed, Refused};
use crate::state::App;

/// The catalogues that ship with the gateway, by name.
pub const BUILT_IN: &[(&str, &str)] = &[("panorama", include_str!("../catalogues/panorama.json"))];

/// At most this many types in one import.
pub const MAX_TYPES: usize = 100;

/// One type of a catalogue: its name and schema (`key`, `schemaless`, `fields`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeDefinition {
    pub name: EntityTypeName,
    #[serde(flatten)]
    pub schema: Schema,
}

/// What an import did to one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Defined,
    Changed,
    Unchanged,
}

/// One type after an import.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Imported {
    pub name: EntityTypeName,
    pub outcome: Outcome,
    /// The type's version after the import.
    pub version: u64,
}

/// An import's result: every type in the order given, and the position of the commit's last
/// event (none when nothing changed).
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    pub types: Vec<Imported>,
    pub cursor: Option<Cursor>,
}

/// The types of the built-in catalogue `name`.
pub fn built_in(name: &str) -> Result<Vec<TypeDefinition>, Error> {
    let Some((_, text)) = BUILT_IN.iter().find(|(known, _)| *known == name) else {
        let known: Vec<&str> = BUILT_IN.iter().map(|(name, _)| *name).collect();
        return Err(Error::Validation(vec![FieldError {
            field: "catalogue".into(),
            message: format!("no catalogue '{name}' (known: {})", known.join(", ")),
        }]));
    };
    parse(serde_json::from_str(text).map_err(Error::internal)?)
}

/// Reads `{"entityTypes": [{"name": …, "key": …, "fields": …}, …]}`, naming the entry of
/// every problem.
pub fn parse(document: Value) -> Result<Vec<TypeDefinition>, Error> {
    let invalid =
        |field: String, message: String| Error::Validation(vec![FieldError { field, message }]);
    let Some(entries) = document.get("entityTypes").and_then(Value::as_array) else {
        return Err(invalid(
            "entityTypes".into(),
            "an array of entity types ({\"name\", \"key\", \"fields\", …})".into(),
        ));
    };
    if entries.is_empty() || entries.len() > MAX_TYPES {
        return Err(invalid(
            "entityTypes".into(),
            format!("1 to {MAX_TYPES} entity types"),
        ));
    }
    let mut types: Vec<TypeDefinition> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        if !entry.is_object() {
            return Err(invalid(format!("entityTypes[{i}]"), "an object".into()));
        }
        let name = entry
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = EntityTypeName::parse(name)
            .map_err(|e| invalid(format!("entityTypes[{i}].name"), e.to_string()))?;
        if types.iter().any(|t| t.name == name) {
            return Err(invalid(
                format!("entityTypes[{i}].name"),
                format!("'{name}' is listed twice"),
            ));
        }
        let mut schema = entry.clone();
        if let Some(object) = schema.as_object_mut() {
            object.remove("name");
        }
        let schema: Schema = serde_json::from_value(schema)
            .map_err(|e| invalid(format!("entityTypes[{i}]"), e.to_string()))?;
        types.push(TypeDefinition { name, schema });
    }
    Ok(types)
}

/// The import a client asks for: `types` applied to the context's tenant under its
/// idempotency key (`hashed` identifies the request), within the tenant's index budget.
pub async fn apply(
    state: &App,
    ctx: &Context,
    hashed: &Value,
    types: &[TypeDefinition],
    respond: impl Fn(&Import) -> StoredResponse + Send + Sync + Clone + 'static,
) -> Result<StoredResponse, Refused> {
    let key = match idempotency::claim(state, ctx, hashed).await? {
        Claimed::Replay(stored) => return Err(Refused::Replayed(stored)),
        Claimed::Run(key) => key,
    };
    let budget: Vec<(&EntityTypeName, &Schema)> =
        types.iter().map(|t| (&t.name, &t.schema)).collect();
    let result = match crate::entity_types::check_index_budget(state, &ctx.tenant, &budget).await {
        Ok(()) => {
            let metadata = ctx.metadata(IMPORT_COMMAND);
            import(
                &state.log,
                &ctx.tenant,
                &metadata,
                types,
                key.as_ref(),
                respond,
            )
            .await
        }
        Err(error) => Err(error),
    };
    let label = match &result {
        Ok(_) => "accepted",
        Err(error) if error.is_refusal() => "rejected",
        Err(_) => "error",
    };
    state.metrics.command(IMPORT_COMMAND, label);
    match result {
        Ok((_, response)) => Ok(response),
        Err(error) => Err(idempotency::settle(state, &ctx.request_id, key.as_ref(), error).await),
    }
}

/// The command name an import's events carry in their metadata.
pub const IMPORT_COMMAND: &str = "ImportEntityTypes";

/// Applies `types` to the tenant in one commit (see the module's docs). With `key`, claimed
/// by the caller, `respond` renders the answer that the commit stores under it.
pub async fn import(
    log: &EventLog,
    tenant: &TenantId,
    metadata: &EventMetadata,
    types: &[TypeDefinition],
    key: Option<&IdempotencyKey>,
    respond: impl Fn(&Import) -> StoredResponse + Send + Sync + Clone + 'static,
) -> Result<(Import, StoredResponse), Error> {
    // A conflict means another writer changed one of the types meanwhile: decide again on
    // what is there now.
    for _ in 0..eventlog::command::MAX_ATTEMPTS {
        let mut uow = UnitOfWork::new(log);
        let mut outcomes = Vec::with_capacity(types.len());
        for definition in types {
            let stream = type_stream(tenant, &definition.name);
            let existing = uow
                .state::<EntityType>(&stream)
                .await
                .map_err(|e| command_error(e, &definition.name))?;
            let (exists, equal, version) = (
                existing.aggregate.exists(),
                *existing.aggregate.schema() == definition.schema,
                existing.version(),
            );
            let mut missing_references = Vec::new();
            for target in definition.schema.referenced_types() {
                if target == &definition.name
                    || missing_references.contains(target)
                    || types.iter().any(|t| &t.name == target)
                {
                    continue;
                }
                let referenced = uow
                    .state::<EntityType>(&type_stream(tenant, target))
                    .await
                    .map_err(|e| command_error(e, target))?;
                if !referenced.aggregate.exists() {
                    missing_references.push(target.clone());
                }
            }
            let (command, outcome) = match (exists, equal) {
                (false, _) => (
                    EntityTypeCommand::DefineEntityType {
                        name: definition.name.clone(),
                        schema: definition.schema.clone(),
                        missing_references,
                    },
                    Outcome::Defined,
                ),
                (true, false) => (
                    EntityTypeCommand::ChangeEntityType {
                        schema: definition.schema.clone(),
                        missing_references,
                        expected_version: None,
                    },
                    Outcome::Changed,
                ),
                (true, true) => {
                    outcomes.push(Imported {
                        name: definition.name.clone(),
                        outcome: Outcome::Unchanged,
                        version,
                    });
                    continue;
                }
            };
            let staged = uow
                .execute::<EntityType>(&stream, command, &())
                .await
                .map_err(|e| command_error(e, &definition.name))?;
            outcomes.push(Imported {
                name: definition.name.clone(),
                outcome,
                version: staged.version(),
            });
        }
        let render = {
            let (outcomes, respond) = (outcomes.clone(), respond.clone());
            move |committed: &eventlog::group_commit::Committed| {
                respond(&Import {
                    types: outcomes.clone(),
                    cursor: committed.appended.last_cursor(),
                })
            }
        };
        match uow
            .commit(metadata, key.cloned().map(KeyUse::Claimed), render)
            .await
        {
            Ok((committed, response)) => {
                let import = Import {
                    types: outcomes,
                    cursor: committed.appended.last_cursor(),
                };
                return Ok((import, response));
            }
            Err(CommitError::Conflict) => continue,
            Err(CommitError::Database(error)) => return Err(error.into()),
            Err(other) => return Err(Error::internal(other)),
        }
    }
    Err(Error::ConcurrentModification)
}

fn command_error(
    error: CommandError<domain::entity_type::EntityTypeError>,
    name: &EntityTypeName,
) -> Error {
    match error {
        CommandError::Rejected(refusal) => crate::refusals::entity_type(name)(refusal),
        CommandError::Conflict => Error::ConcurrentModification,
        CommandError::Database(error) => error.into(),
        other => Error::internal(other),
    }
}

/// The tenant's types, in the shape [`parse`] reads, by name.
pub async fn export(log: &EventLog, tenant: &TenantId) -> Result<Vec<TypeDefinition>, Error> {
    let records = projections::entity_types::list(log.db(), tenant.as_str()).await?;
    records
        .into_iter()
        .map(|record| {
            Ok(TypeDefinition {
                name: EntityTypeName::parse_stored(record.name).map_err(Error::internal)?,
                schema: record.schema,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panorama_catalogue_reads_and_every_schema_is_valid() {
        let types = built_in("panorama").unwrap();
        let names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["users", "conversations", "messages", "agent-shared-states"]
        );
        let shared = &types[3].schema;
        assert_eq!(shared.key, ["agentName", "userId", "conversationId"]);
        for definition in &types {
            let defined: Vec<EntityTypeName> = types.iter().map(|t| t.name.clone()).collect();
            let missing: Vec<EntityTypeName> = definition
                .schema
                .referenced_types()
                .filter(|&target| !defined.contains(target))
                .cloned()
                .collect();
            assert!(missing.is_empty(), "{}: {missing:?}", definition.name);
            assert!(
                definition
                    .schema
                    .check(&definition.name, |_: &EntityTypeName| true)
                    .is_empty(),
                "{}",
                definition.name
            );
        }
    }

    #[test]
    fn an_unknown_catalogue_and_malformed_entries_name_the_field() {
        let field = |error: Error| match error {
            Error::Validation(fields) => fields[0].field.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(field(built_in("nope").unwrap_err()), "catalogue");
        assert_eq!(
            field(parse(serde_json::json!({})).unwrap_err()),
            "entityTypes"
        );
        assert_eq!(
            field(parse(serde_json::json!({"entityTypes": []})).unwrap_err()),
            "entityTypes"
        );
        assert_eq!(
            field(parse(serde_json::json!({"entityTypes": [{"name": "Bad"}]})).unwrap_err()),
            "entityTypes[0].name"
        );
        assert_eq!(
            field(
                parse(serde_json::json!({"entityTypes": [{"name": "a"}, {"name": "a"}]}))
                    .unwrap_err()
            ),
            "entityTypes[1].name"
        );
        assert_eq!(
            field(
                parse(serde_json::json!({"entityTypes": [{"name": "a", "fields": 1}]}))
                    .unwrap_err()
            ),
            "entityTypes[0]"
        );
        assert_eq!(
            field(parse(serde_json::json!({"entityTypes": [7]})).unwrap_err()),
            "entityTypes[0]"
        );
    }
}
