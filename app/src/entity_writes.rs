//! Writes to records of entity types: one operation (`POST`/`PUT`/`PATCH`/`DELETE` on
//! `/v1/{entity}`) or up to [`MAX_OPERATIONS`] (`POST /v1/_transact`), committed together or
//! not at all.
//!
//! Each operation runs its `Entity` command with the type's schema, then keeps the rules that
//! span records, in the same unit of work:
//! - every value of a unique field is claimed on its `UniqueValue` stream (released when the
//!   record gives it up), so two records racing for one value conflict in the log and the
//!   second is refused with `UNIQUE_VIOLATION`;
//! - every reference is added to the referenced record's `References` stream, after checking
//!   that record exists; deleting a record closes its stream, after refusing
//!   (`onDelete: restrict`) or nullifying (`onDelete: nullify`) what references it.
//!
//! - a relation's edge (`link`, `unlink`) is kept on the `Links` stream of the record it
//!   starts from and listed on the `References` stream of the record it points at; deleting a
//!   record removes the edges that start at it, and those pointing at it (`onDelete: unlink`)
//!   or is refused (`restrict`).
//!
//! When another writer changed a stream the unit of work read, everything is decided again
//! (bounded); the operations' outcomes are those of the attempt that committed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::constraints::{
    References, ReferencesCommand, ReferencesError, Referrer, UniqueValue, UniqueValueCommand,
    UniqueValueError,
};
use domain::entity::{Entity, EntityCommand, EntityError};
use domain::entity_type::{EntityType, FieldViolation, OnDelete, RelationOnDelete, Schema};
use domain::metadata::EventMetadata;
use domain::names::{EntityId, EntityTypeName, TenantId};
use domain::relation::{
    Edge, Links, LinksCommand, LinksError, MAX_INCOMING_PER_RECORD, MAX_LINKS_PER_RECORD,
};
use eventlog::command::MAX_ATTEMPTS;
use eventlog::group_commit::KeyUse;
use eventlog::idempotency::{IdempotencyKey, StoredResponse};
use eventlog::unit_of_work::{CommitError, Committed, UnitOfWork};
use eventlog::{CommandError, Cursor, EventLog, StreamId};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::error::{Error, FieldError};
use crate::idempotency::{self, Claimed, Refused};
use crate::state::App;

/// At most this many operations in one `_transact`.
pub const MAX_OPERATIONS: usize = 100;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Create,
    /// JSON merge patch.
    Update,
    Replace,
    Delete,
    /// Add an edge of a relation (the operation's `link`).
    Link,
    /// Remove an edge of a relation.
    Unlink,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Replace => "replace",
            Self::Delete => "delete",
            Self::Link => "link",
            Self::Unlink => "unlink",
        }
    }
}

/// The edge a `link` or `unlink` operation names, from the operation's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTo {
    pub relation: String,
    pub target: EntityId,
}

/// One operation on one record.
#[derive(Debug, Clone)]
pub struct Operation {
    pub kind: OpKind,
    pub entity_type: EntityTypeName,
    /// The record id; for a create, the body's `id` if it had one.
    pub id: Option<EntityId>,
    /// For a create without an id and without key fields: the id it gets. Chosen once, so
    /// that every attempt creates the same record.
    pub generated_id: EntityId,
    /// The document (create, replace) or the merge patch (update).
    pub data: Map<String, Value>,
    pub expected_version: Option<u64>,
    /// For `link` and `unlink`: the edge.
    pub link: Option<LinkTo>,
}

impl Operation {
    /// A `link` (or, with `unlink`, an `unlink`) of the record `id` to `target` by `relation`.
    pub fn link(
        unlink: bool,
        entity_type: EntityTypeName,
        id: EntityId,
        relation: String,
        target: EntityId,
    ) -> Self {
        let kind = if unlink { OpKind::Unlink } else { OpKind::Link };
        Self {
            link: Some(LinkTo { relation, target }),
            ..Self::new(kind, entity_type, Some(id), Map::new(), None)
        }
    }

    pub fn new(
        kind: OpKind,
        entity_type: EntityTypeName,
        id: Option<EntityId>,
        data: Map<String, Value>,
        expected_version: Option<u64>,
    ) -> Self {
        Self {
            kind,
            entity_type,
            id,
            generated_id: EntityId::parse(uuid::Uuid::now_v7().to_string())
                .expect("a uuid is a valid id"),
            data,
            expected_version,
            link: None,
        }
    }

    fn command_name(&self) -> &'static str {
        match self.kind {
            OpKind::Create => "CreateEntity",
            OpKind::Update => "UpdateEntity",
            OpKind::Replace => "ReplaceEntity",
            OpKind::Delete => "DeleteEntity",
            OpKind::Link => "LinkRelation",
            OpKind::Unlink => "UnlinkRelation",
        }
    }
}

/// A record as an operation left it.
#[derive(Debug, Clone)]
pub struct OpResult {
    pub kind: OpKind,
    pub entity_type: EntityTypeName,
    pub id: EntityId,
    pub version: u64,
    pub data: Map<String, Value>,
    pub deleted: bool,
    /// `None`: created by this commit.
    pub created_at: Option<DateTime<Utc>>,
    /// `None`: changed by this commit.
    pub updated_at: Option<DateTime<Utc>>,
    /// The record's last event before this commit (for an operation that changed nothing).
    pub cursor: Option<Cursor>,
    /// For `link` and `unlink`: the edge, and whether this commit added (removed) it.
    pub edge: Option<(Edge, bool)>,
}

impl OpResult {
    pub fn created_at(&self, committed: &Committed) -> DateTime<Utc> {
        self.created_at.unwrap_or(committed.recorded_at)
    }

    pub fn updated_at(&self, committed: &Committed) -> DateTime<Utc> {
        self.updated_at.unwrap_or(committed.recorded_at)
    }
}

/// Why a write did not commit.
#[derive(Debug)]
pub enum WriteFailure {
    /// The error, and which operation caused it.
    Failed {
        error: Error,
        operation: Option<usize>,
    },
    /// The idempotency key to claim in the commit is held by another request (a retry of a
    /// request that completed, or one still running); nothing was written.
    KeyTaken,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed {
                error,
                operation: Some(index),
            } => write!(f, "operation {index}: {error}"),
            Self::Failed { error, .. } => write!(f, "{error}"),
            Self::KeyTaken => f.write_str("the idempotency key is held by another request"),
        }
    }
}

/// `<entity type>/<id>`, the id of a record's streams (what `format!` writes, without the
/// formatting machinery: a request names these streams several times).
fn record_stream_id(entity_type: &EntityTypeName, id: &EntityId) -> String {
    let (entity_type, id) = (entity_type.as_str(), id.as_str());
    let mut joined = String::with_capacity(entity_type.len() + 1 + id.len());
    joined.push_str(entity_type);
    joined.push('/');
    joined.push_str(id);
    joined
}

pub fn entity_stream(tenant: &TenantId, entity_type: &EntityTypeName, id: &EntityId) -> StreamId {
    StreamId::new(
        tenant.clone(),
        Entity::TYPE,
        record_stream_id(entity_type, id),
    )
}

pub fn type_stream(tenant: &TenantId, entity_type: &EntityTypeName) -> StreamId {
    StreamId::new(tenant.clone(), EntityType::TYPE, entity_type.as_str())
}

fn references_stream(tenant: &TenantId, entity_type: &EntityTypeName, id: &EntityId) -> StreamId {
    StreamId::new(
        tenant.clone(),
        References::TYPE,
        record_stream_id(entity_type, id),
    )
}

pub fn links_stream(tenant: &TenantId, entity_type: &EntityTypeName, id: &EntityId) -> StreamId {
    StreamId::new(
        tenant.clone(),
        Links::TYPE,
        record_stream_id(entity_type, id),
    )
}

fn unique_stream(
    tenant: &TenantId,
    entity_type: &EntityTypeName,
    field: &str,
    value: &Value,
) -> StreamId {
    let digest = Sha256::digest(crate::idempotency::canonical_json(value).as_bytes());
    let hash = crate::idempotency::hex(&digest[..16]);
    StreamId::new(
        tenant.clone(),
        UniqueValue::TYPE,
        format!("{entity_type}/{field}/{hash}"),
    )
}

fn violations(problems: Vec<FieldViolation>) -> Error {
    Error::Validation(problems.into_iter().map(FieldError::from).collect())
}

/// An entity type as the log holds it (exact, not from a read model).
pub async fn load_type(
    log: &EventLog,
    tenant: &TenantId,
    entity_type: &EntityTypeName,
) -> Result<eventlog::command::Loaded<EntityType>, Error> {
    log.load_aggregate::<EntityType>(&type_stream(tenant, entity_type))
        .await
        .map_err(|e| command_error(e, Error::internal))
}

/// Maps a failed command of the unit of work; `refused` maps the aggregate's own refusals.
fn command_error<E: std::error::Error + Send + Sync + 'static>(
    error: CommandError<E>,
    refused: impl FnOnce(E) -> Error,
) -> Error {
    match error {
        CommandError::Rejected(e) => refused(e),
        CommandError::Conflict => Error::ConcurrentModification,
        CommandError::Database(e) => e.into(),
        other => Error::internal(other),
    }
}

fn entity_refusal(
    entity_type: &EntityTypeName,
    id: &EntityId,
) -> impl FnOnce(EntityError) -> Error {
    let (entity_type, id) = (entity_type.to_string(), id.to_string());
    move |error| match error {
        EntityError::AlreadyExists => Error::EntityAlreadyExists { entity_type, id },
        EntityError::NotFound => Error::EntityNotFound { entity_type, id },
        EntityError::VersionConflict { expected, actual } => {
            Error::VersionConflict { expected, actual }
        }
        EntityError::SystemField(field) => Error::Validation(vec![FieldError {
            message: format!("'{field}' is managed by the gateway and cannot be changed"),
            field,
        }]),
        EntityError::Invalid(problems) => violations(problems),
    }
}

/// The operations of one attempt, on one unit of work.
struct Writer<'a> {
    uow: UnitOfWork<'a>,
    tenant: TenantId,
    schemas: HashMap<EntityTypeName, Option<Schema>>,
}

impl<'a> Writer<'a> {
    /// A speculative writer decides on cached entity types and takes records to create as new
    /// without reading them (see [`UnitOfWork::speculative`]).
    fn new(log: &'a EventLog, tenant: TenantId, speculative: bool) -> Self {
        Self {
            uow: if speculative {
                UnitOfWork::speculative(log)
            } else {
                UnitOfWork::new(log)
            },
            tenant,
            schemas: HashMap::new(),
        }
    }

    async fn schema(&mut self, entity_type: &EntityTypeName) -> Result<Schema, Error> {
        if !self.schemas.contains_key(entity_type) {
            let stream = type_stream(&self.tenant, entity_type);
            let staged = self
                .uow
                .state::<EntityType>(&stream)
                .await
                .map_err(|e| command_error(e, Error::internal))?;
            let schema = staged
                .aggregate
                .exists()
                .then(|| staged.aggregate.schema().clone());
            self.schemas.insert(entity_type.clone(), schema);
        }
        self.schemas[entity_type]
            .clone()
            .ok_or_else(|| Error::EntityTypeNotFound(entity_type.to_string()))
    }

    async fn entity(
        &mut self,
        stream: &StreamId,
    ) -> Result<(bool, Map<String, Value>, u64), Error> {
        let staged = self
            .uow
            .state::<Entity>(stream)
            .await
            .map_err(|e| command_error(e, Error::internal))?;
        Ok((
            staged.aggregate.exists(),
            staged.aggregate.data().clone(),
            staged.version(),
        ))
    }

    fn create_id(&self, op: &Operation, schema: &Schema) -> Result<EntityId, Error> {
        let derived = schema
            .key_of(&op.data)
            .map_err(|problem| violations(vec![problem]))?;
        match (derived, &op.id) {
            (Some(derived), Some(given)) if derived != *given => {
                Err(violations(vec![FieldViolation::new(
                    "id",
                    format!(
                        "the key fields make the id '{derived}'; leave 'id' out or make it equal"
                    ),
                )]))
            }
            (Some(derived), _) => Ok(derived),
            (None, Some(given)) => Ok(given.clone()),
            (None, None) => Ok(op.generated_id.clone()),
        }
    }

    /// Runs one operation; nullifying references may run further updates.
    async fn apply(&mut self, op: &Operation) -> Result<OpResult, Error> {
        let schema = self.schema(&op.entity_type).await?;
        let entity_type = &op.entity_type;
        let id = match (op.kind, &op.id) {
            (OpKind::Create, _) => self.create_id(op, &schema)?,
            (_, Some(id)) => id.clone(),
            (_, None) => {
                return Err(violations(vec![FieldViolation::new(
                    "id",
                    "is required for this operation",
                )]));
            }
        };
        if let (OpKind::Link | OpKind::Unlink, Some(link)) = (op.kind, &op.link) {
            return self.link(op.kind, &schema, entity_type, &id, link).await;
        }
        let stream = entity_stream(&self.tenant, entity_type, &id);
        if op.kind == OpKind::Create {
            self.uow.assume_new(std::slice::from_ref(&stream));
        }
        let (existed, before, version_before) = self.entity(&stream).await?;
        let command = match op.kind {
            OpKind::Create => EntityCommand::CreateEntity {
                entity_type: entity_type.clone(),
                id: id.clone(),
                data: op.data.clone(),
                schema: schema.clone(),
            },
            OpKind::Update => EntityCommand::UpdateEntity {
                patch: op.data.clone(),
                expected_version: op.expected_version,
                schema: schema.clone(),
            },
            OpKind::Replace => EntityCommand::ReplaceEntity {
                data: op.data.clone(),
                expected_version: op.expected_version,
                schema: schema.clone(),
            },
            OpKind::Delete => EntityCommand::DeleteEntity {
                expected_version: op.expected_version,
            },
            OpKind::Link | OpKind::Unlink => {
                return Err(violations(vec![FieldViolation::new(
                    "relation",
                    "is required for this operation",
                )]));
            }
        };
        let staged = self
            .uow
            .execute::<Entity>(&stream, command, &())
            .await
            .map_err(|e| command_error(e, entity_refusal(entity_type, &id)))?;
        let changed = staged.version() != version_before;
        let result = OpResult {
            kind: op.kind,
            entity_type: entity_type.clone(),
            id: id.clone(),
            version: staged.version(),
            data: staged.aggregate.data().clone(),
            deleted: !staged.aggregate.exists(),
            created_at: staged.created_at,
            updated_at: if changed { None } else { staged.updated_at },
            cursor: staged.cursor,
            edge: None,
        };
        if changed {
            let before = existed.then_some(&before);
            let after = (!result.deleted).then_some(&result.data);
            self.keep_unique(&schema, entity_type, &id, before, after)
                .await?;
            self.keep_references(&schema, entity_type, &id, before, after)
                .await?;
            if op.kind == OpKind::Delete {
                if !schema.relations.is_empty() {
                    self.close_links(entity_type, &id).await?;
                }
                self.release_referrers(entity_type, &id).await?;
            }
        }
        Ok(result)
    }

    async fn keep_unique(
        &mut self,
        schema: &Schema,
        entity_type: &EntityTypeName,
        id: &EntityId,
        before: Option<&Map<String, Value>>,
        after: Option<&Map<String, Value>>,
    ) -> Result<(), Error> {
        let value = |doc: Option<&Map<String, Value>>, field: &str| {
            doc.and_then(|d| d.get(field))
                .filter(|v| !v.is_null())
                .cloned()
        };
        for field in schema.unique_fields() {
            let (old, new) = (value(before, field), value(after, field));
            if old == new {
                continue;
            }
            if let Some(old) = old {
                let stream = unique_stream(&self.tenant, entity_type, field, &old);
                let command = UniqueValueCommand::Release { owner: id.clone() };
                self.uow
                    .execute::<UniqueValue>(&stream, command, &())
                    .await
                    .map_err(|e| command_error(e, Error::internal))?;
            }
            if let Some(new) = new {
                let stream = unique_stream(&self.tenant, entity_type, field, &new);
                let command = UniqueValueCommand::Claim {
                    entity_type: entity_type.clone(),
                    field: field.to_string(),
                    value: new.clone(),
                    owner: id.clone(),
                };
                self.uow
                    .execute::<UniqueValue>(&stream, command, &())
                    .await
                    .map_err(|e| {
                        command_error(e, |UniqueValueError::Taken { owner }| {
                            Error::UniqueViolation {
                                entity_type: entity_type.to_string(),
                                field: field.to_string(),
                                value: new.clone(),
                                existing_id: owner.to_string(),
                            }
                        })
                    })?;
            }
        }
        Ok(())
    }

    async fn keep_references(
        &mut self,
        schema: &Schema,
        entity_type: &EntityTypeName,
        id: &EntityId,
        before: Option<&Map<String, Value>>,
        after: Option<&Map<String, Value>>,
    ) -> Result<(), Error> {
        let target = |doc: Option<&Map<String, Value>>, field: &str| {
            doc.and_then(|d| d.get(field))
                .and_then(Value::as_str)
                .and_then(|s| EntityId::parse(s).ok())
        };
        for (field, target_type) in schema.reference_fields() {
            let (old, new) = (target(before, field), target(after, field));
            if old == new {
                continue;
            }
            let referrer = Referrer {
                entity_type: entity_type.clone(),
                id: id.clone(),
                field: field.to_string(),
                relation: false,
            };
            if let Some(old) = old {
                let stream = references_stream(&self.tenant, target_type, &old);
                let command = ReferencesCommand::Remove {
                    referrer: referrer.clone(),
                };
                self.uow
                    .execute::<References>(&stream, command, &())
                    .await
                    .map_err(|e| command_error(e, Error::internal))?;
            }
            if let Some(new) = new {
                let missing = || {
                    violations(vec![FieldViolation::new(
                        field,
                        format!("no {target_type} record '{new}'"),
                    )])
                };
                let target_stream = entity_stream(&self.tenant, target_type, &new);
                let (exists, _, _) = self.entity(&target_stream).await?;
                if !exists {
                    return Err(missing());
                }
                let stream = references_stream(&self.tenant, target_type, &new);
                let command = ReferencesCommand::Add {
                    target_type: target_type.clone(),
                    target_id: new.clone(),
                    referrer,
                };
                self.uow
                    .execute::<References>(&stream, command, &())
                    .await
                    .map_err(|e| {
                        command_error(e, |e| match e {
                            ReferencesError::TargetDeleted => missing(),
                            other => Error::internal(other),
                        })
                    })?;
            }
        }
        Ok(())
    }

    /// Reads ahead, in one query, the records that the `link` operations among `operations`
    /// point at (and their `References`), once their types are known.
    async fn prefetch_links(&mut self, operations: &[Operation]) -> Result<(), Error> {
        let mut streams = Vec::new();
        for op in operations {
            let (Some(link), Some(id)) = (&op.link, &op.id) else {
                continue;
            };
            let Ok(schema) = self.schema(&op.entity_type).await else {
                continue;
            };
            streams.push(entity_stream(&self.tenant, &op.entity_type, id));
            if let Some(spec) = schema.relations.get(&link.relation) {
                streams.push(entity_stream(&self.tenant, &spec.to, &link.target));
                streams.push(references_stream(&self.tenant, &spec.to, &link.target));
            }
        }
        if !streams.is_empty() {
            self.uow.prefetch(&streams).await?;
        }
        Ok(())
    }

    /// A `link` or `unlink` of the record `id`: the edge on the record's `Links`, and on the
    /// `References` of the record it points at.
    async fn link(
        &mut self,
        kind: OpKind,
        schema: &Schema,
        entity_type: &EntityTypeName,
        id: &EntityId,
        link: &LinkTo,
    ) -> Result<OpResult, Error> {
        let spec = schema
            .relations
            .get(&link.relation)
            .ok_or_else(|| Error::RelationNotFound {
                entity_type: entity_type.to_string(),
                relation: link.relation.clone(),
            })?;
        let not_found = |entity_type: &EntityTypeName, id: &EntityId| Error::EntityNotFound {
            entity_type: entity_type.to_string(),
            id: id.to_string(),
        };
        let (exists, _, _) = self
            .entity(&entity_stream(&self.tenant, entity_type, id))
            .await?;
        if !exists {
            return Err(not_found(entity_type, id));
        }
        let edge = Edge {
            source_type: entity_type.clone(),
            source_id: id.clone(),
            relation: link.relation.clone(),
            target_type: spec.to.clone(),
            target_id: link.target.clone(),
        };
        let referrer = Referrer {
            entity_type: entity_type.clone(),
            id: id.clone(),
            field: link.relation.clone(),
            relation: true,
        };
        let source = links_stream(&self.tenant, entity_type, id);
        let target = references_stream(&self.tenant, &edge.target_type, &edge.target_id);
        let limit = |entity_type: &EntityTypeName, id: &EntityId, limit| Error::RelationLimit {
            entity_type: entity_type.to_string(),
            id: id.to_string(),
            limit,
        };
        let command = if kind == OpKind::Link {
            let (exists, _, _) = self
                .entity(&entity_stream(
                    &self.tenant,
                    &edge.target_type,
                    &edge.target_id,
                ))
                .await?;
            if !exists {
                return Err(not_found(&edge.target_type, &edge.target_id));
            }
            LinksCommand::Link { edge: edge.clone() }
        } else {
            LinksCommand::Unlink {
                relation: link.relation.clone(),
                target_id: link.target.clone(),
            }
        };
        let before = self
            .uow
            .state::<Links>(&source)
            .await
            .map_err(|e| command_error(e, Error::internal))?
            .version();
        let staged = self
            .uow
            .execute::<Links>(&source, command, &())
            .await
            .map_err(|e| {
                command_error(e, |e| match e {
                    LinksError::SourceDeleted => not_found(entity_type, id),
                    LinksError::TooMany => limit(entity_type, id, MAX_LINKS_PER_RECORD),
                })
            })?;
        let (version, cursor) = (staged.version(), staged.cursor);
        let changed = version != before;
        if kind == OpKind::Unlink && !changed {
            return Err(Error::EdgeNotFound {
                entity_type: entity_type.to_string(),
                id: id.to_string(),
                relation: link.relation.clone(),
                target_id: link.target.to_string(),
            });
        }
        if changed {
            let command = if kind == OpKind::Link {
                let incoming = self
                    .uow
                    .state::<References>(&target)
                    .await
                    .map_err(|e| command_error(e, Error::internal))?
                    .aggregate
                    .referrers()
                    .len();
                if incoming >= MAX_INCOMING_PER_RECORD {
                    return Err(limit(
                        &edge.target_type,
                        &edge.target_id,
                        MAX_INCOMING_PER_RECORD,
                    ));
                }
                ReferencesCommand::Add {
                    target_type: edge.target_type.clone(),
                    target_id: edge.target_id.clone(),
                    referrer,
                }
            } else {
                ReferencesCommand::Remove { referrer }
            };
            self.uow
                .execute::<References>(&target, command, &())
                .await
                .map_err(|e| {
                    command_error(e, |e| match e {
                        ReferencesError::TargetDeleted => {
                            not_found(&edge.target_type, &edge.target_id)
                        }
                        other => Error::internal(other),
                    })
                })?;
        }
        Ok(OpResult {
            kind,
            entity_type: entity_type.clone(),
            id: id.clone(),
            version,
            data: Map::new(),
            deleted: false,
            created_at: None,
            updated_at: None,
            cursor,
            edge: Some((edge, changed)),
        })
    }

    /// Before a record with relations goes: every edge that starts at it is removed from the
    /// record it points at, and its `Links` closed.
    async fn close_links(
        &mut self,
        entity_type: &EntityTypeName,
        id: &EntityId,
    ) -> Result<(), Error> {
        let stream = links_stream(&self.tenant, entity_type, id);
        let edges: Vec<Edge> = self
            .uow
            .state::<Links>(&stream)
            .await
            .map_err(|e| command_error(e, Error::internal))?
            .aggregate
            .edges()
            .iter()
            .cloned()
            .collect();
        let targets: Vec<StreamId> = edges
            .iter()
            .map(|e| references_stream(&self.tenant, &e.target_type, &e.target_id))
            .collect();
        self.uow.prefetch(&targets).await?;
        for (edge, target) in edges.into_iter().zip(targets) {
            let referrer = Referrer {
                entity_type: entity_type.clone(),
                id: id.clone(),
                field: edge.relation,
                relation: true,
            };
            self.uow
                .execute::<References>(&target, ReferencesCommand::Remove { referrer }, &())
                .await
                .map_err(|e| command_error(e, Error::internal))?;
        }
        let command = LinksCommand::Close {
            source_type: entity_type.clone(),
            source_id: id.clone(),
        };
        self.uow
            .execute::<Links>(&stream, command, &())
            .await
            .map_err(|e| command_error(e, Error::internal))?;
        Ok(())
    }

    /// Before a record goes: refuse if a `restrict` reference points at it, nullify the
    /// `nullify` ones, then close its references.
    async fn release_referrers(
        &mut self,
        entity_type: &EntityTypeName,
        id: &EntityId,
    ) -> Result<(), Error> {
        let stream = references_stream(&self.tenant, entity_type, id);
        let referrers: Vec<Referrer> = self
            .uow
            .state::<References>(&stream)
            .await
            .map_err(|e| command_error(e, Error::internal))?
            .aggregate
            .referrers()
            .iter()
            .cloned()
            .collect();
        let sources: Vec<StreamId> = referrers
            .iter()
            .filter(|r| r.relation)
            .map(|r| links_stream(&self.tenant, &r.entity_type, &r.id))
            .collect();
        if !sources.is_empty() {
            self.uow.prefetch(&sources).await?;
        }
        let mut restricting = Vec::new();
        let mut nullify = Vec::new();
        let mut unlink = Vec::new();
        for referrer in referrers {
            let schema = self.schema(&referrer.entity_type).await?;
            if referrer.relation {
                let policy = schema
                    .relations
                    .get(&referrer.field)
                    .map_or(RelationOnDelete::Restrict, |spec| spec.on_delete());
                match policy {
                    RelationOnDelete::Restrict => restricting.push(referrer),
                    RelationOnDelete::Unlink => unlink.push(referrer),
                }
                continue;
            }
            let policy = schema
                .fields
                .get(&referrer.field)
                .map_or(OnDelete::Restrict, |spec| spec.on_delete());
            match policy {
                OnDelete::Restrict => restricting.push(referrer),
                OnDelete::Nullify => nullify.push(referrer),
            }
        }
        if !restricting.is_empty() {
            return Err(Error::ReferenceRestricted {
                entity_type: entity_type.to_string(),
                id: id.to_string(),
                referrers: serde_json::to_value(&restricting).unwrap_or_default(),
            });
        }
        for referrer in nullify {
            let mut patch = Map::new();
            patch.insert(referrer.field.clone(), Value::Null);
            let op = Operation::new(
                OpKind::Update,
                referrer.entity_type.clone(),
                Some(referrer.id.clone()),
                patch,
                None,
            );
            Box::pin(self.apply(&op)).await?;
        }
        for referrer in unlink {
            let source = links_stream(&self.tenant, &referrer.entity_type, &referrer.id);
            let command = LinksCommand::Unlink {
                relation: referrer.field.clone(),
                target_id: id.clone(),
            };
            self.uow
                .execute::<Links>(&source, command, &())
                .await
                .map_err(|e| command_error(e, Error::internal))?;
            self.uow
                .execute::<References>(&stream, ReferencesCommand::Remove { referrer }, &())
                .await
                .map_err(|e| command_error(e, Error::internal))?;
        }
        let command = ReferencesCommand::Close {
            target_type: entity_type.clone(),
            target_id: id.clone(),
        };
        self.uow
            .execute::<References>(&stream, command, &())
            .await
            .map_err(|e| {
                command_error(e, |e| match e {
                    ReferencesError::StillReferenced(referrers) => Error::ReferenceRestricted {
                        entity_type: entity_type.to_string(),
                        id: id.to_string(),
                        referrers: serde_json::to_value(&referrers).unwrap_or_default(),
                    },
                    other => Error::internal(other),
                })
            })?;
        Ok(())
    }
}

/// The streams that `operations` read for sure, to read them all in one query: the types,
/// the records (for a create without an id, the generated one), and what a delete releases.
fn streams_read(tenant: &TenantId, operations: &[Operation]) -> Vec<StreamId> {
    let mut streams = Vec::with_capacity(operations.len() * 2);
    for op in operations {
        streams.push(type_stream(tenant, &op.entity_type));
        let id = op.id.as_ref().unwrap_or(&op.generated_id);
        streams.push(entity_stream(tenant, &op.entity_type, id));
        match (op.kind, &op.link) {
            (OpKind::Delete, _) => {
                streams.push(references_stream(tenant, &op.entity_type, id));
                streams.push(links_stream(tenant, &op.entity_type, id));
            }
            (OpKind::Link | OpKind::Unlink, Some(_)) => {
                streams.push(links_stream(tenant, &op.entity_type, id));
            }
            _ => {}
        }
    }
    streams
}

/// The records that creates of `operations` expect not to exist (the ids known before the
/// schema is: the body's or the generated one).
fn streams_created(tenant: &TenantId, operations: &[Operation]) -> Vec<StreamId> {
    operations
        .iter()
        .filter(|op| op.kind == OpKind::Create)
        .map(|op| {
            let id = op.id.as_ref().unwrap_or(&op.generated_id);
            entity_stream(tenant, &op.entity_type, id)
        })
        .collect()
}

/// The command name recorded in the events' metadata.
pub fn command_name(operations: &[Operation]) -> &'static str {
    match operations {
        [single] => single.command_name(),
        _ => "Transact",
    }
}

/// Runs `operations` in one commit. `render` makes the response stored with an idempotency
/// key (and returned) from the operations' results and the commit.
///
/// The first attempt is speculative: it decides on cached entity types and takes the records
/// it creates as new, without reading them, and its commit checks both. A refusal decided that
/// way is decided again on read state before it is answered; a conflict is decided again on
/// read state (bounded, with a short random pause).
pub async fn write(
    log: &EventLog,
    tenant: &TenantId,
    operations: &[Operation],
    metadata: &EventMetadata,
    key: Option<KeyUse>,
    render: impl Fn(&[OpResult], &Committed) -> StoredResponse + Send + Sync + 'static,
) -> Result<(Committed, StoredResponse), WriteFailure> {
    let render = std::sync::Arc::new(render);
    let failure =
        |error: Error, operation: Option<usize>| WriteFailure::Failed { error, operation };
    // Commands of this process on one record take turns instead of conflicting.
    let lock_stream = match operations {
        [single] => single
            .id
            .as_ref()
            .map(|id| entity_stream(tenant, &single.entity_type, id)),
        _ => None,
    };
    let _turn = match &lock_stream {
        Some(stream) => Some(log.stream_lock(stream).lock().await),
        None => None,
    };
    let mut speculative = true;
    let mut conflicts = 0;
    'attempt: loop {
        let mut writer = Writer::new(log, tenant.clone(), speculative);
        writer.uow.assume_new(&streams_created(tenant, operations));
        if let Err(error) = writer.uow.prefetch(&streams_read(tenant, operations)).await {
            return Err(failure(error.into(), None));
        }
        if let Err(error) = writer.prefetch_links(operations).await {
            return Err(failure(error, None));
        }
        let mut results = Vec::with_capacity(operations.len());
        for (index, op) in operations.iter().enumerate() {
            match writer.apply(op).await {
                Ok(result) => results.push(result),
                Err(_) if writer.uow.unverified() => {
                    // Perhaps decided on a stale guess: decide again on what the log holds.
                    speculative = false;
                    continue 'attempt;
                }
                Err(error) => return Err(failure(error, Some(index))),
            }
        }
        let render = render.clone();
        match writer
            .uow
            .commit(metadata, key.clone(), move |committed| {
                render(&results, committed)
            })
            .await
        {
            Ok((committed, response)) => return Ok((committed, response)),
            Err(CommitError::Conflict) => {
                conflicts += 1;
                if conflicts >= MAX_ATTEMPTS {
                    return Err(failure(Error::ConcurrentModification, None));
                }
                speculative = false;
                tracing::debug!(conflicts, "a stream changed concurrently; deciding again");
                let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u8 % 8);
                tokio::time::sleep(std::time::Duration::from_millis(
                    conflicts as u64 * 2 + jitter,
                ))
                .await;
            }
            Err(CommitError::KeyTaken) => return Err(WriteFailure::KeyTaken),
            Err(CommitError::Database(error)) => return Err(failure(error.into(), None)),
            Err(other) => return Err(failure(Error::internal(other), None)),
        }
    }
}

/// Runs the record commands of one request with its idempotency key, and gives its answer.
/// `request_key` is the request's idempotency key, made by [`idempotency::key_of`] (from the body
/// before it was taken apart into the operations).
///
/// A request's key is claimed in the commit that holds its events (see
/// [`eventlog::group_commit`]): a new key costs nothing before the command runs. When the key
/// turns out taken, or the command is refused (a refusal is stored as the key's answer), the
/// key is claimed on its own: a completed request's response is replayed, a running one is
/// reported, and a claimed key runs the command as usual.
pub async fn run(
    state: &App,
    ctx: &Context,
    request_key: Option<IdempotencyKey>,
    name: &'static str,
    operations: &[Operation],
    render: impl Fn(&[OpResult], &Committed) -> StoredResponse + Send + Sync + 'static,
) -> Result<StoredResponse, Refused> {
    let metadata = ctx.metadata(name);
    let render = std::sync::Arc::new(render);
    let mut key = request_key.clone().map(KeyUse::Unclaimed);
    loop {
        let render = render.clone();
        let result = write(
            &state.log,
            &ctx.tenant,
            operations,
            &metadata,
            key.clone(),
            move |results, committed| render(results, committed),
        )
        .await;
        let (error, operation) = match result {
            Ok((committed, response)) => {
                state.metrics.command(name, "accepted");
                state
                    .metrics
                    .events_appended(Entity::TYPE, committed.appended.events.len());
                return Ok(response);
            }
            Err(WriteFailure::KeyTaken) => {
                match idempotency::claim_key(state, request_key.clone()).await {
                    Ok(Claimed::Replay(stored)) => return Err(Refused::Replayed(stored)),
                    Ok(Claimed::Run(claimed)) => {
                        key = claimed.map(KeyUse::Claimed);
                        continue;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Err(WriteFailure::Failed { error, operation }) => (error, operation),
        };
        let refused = error.is_refusal();
        state
            .metrics
            .command(name, if refused { "rejected" } else { "error" });
        let error = match operation {
            Some(index) if operations.len() > 1 => Error::OperationFailed {
                index,
                error: Box::new(error),
            },
            _ => error,
        };
        return Err(match key {
            Some(KeyUse::Claimed(key)) if refused => {
                idempotency::refuse(state, &ctx.request_id, Some(&key), error).await
            }
            Some(KeyUse::Claimed(key)) => {
                Refused::Failed(idempotency::release(state, &key, error).await)
            }
            // The refusal is the key's answer: claim the key to store it, unless the key
            // already has one.
            Some(KeyUse::Unclaimed(_)) if refused => {
                match idempotency::claim_key(state, request_key.clone()).await {
                    Ok(Claimed::Replay(stored)) => Refused::Replayed(stored),
                    Ok(Claimed::Run(key)) => {
                        idempotency::refuse(state, &ctx.request_id, key.as_ref(), error).await
                    }
                    Err(claim_error) => Refused::Failed(claim_error),
                }
            }
            _ => idempotency::refuse(state, &ctx.request_id, None, error).await,
        });
    }
}
