//! Tenant-defined entity types: the schema every record of a type is checked against.
//!
//! A type names its key fields (the record id is their values joined with `:`), its fields
//! with their kinds and rules, and whether fields it does not declare are accepted
//! (`schemaless`). Types change through events; a change that records already written under
//! the old schema might not satisfy is refused ([`Schema::incompatibilities`]).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::{EntityId, EntityTypeName};

/// Fields of a record's document that the gateway manages itself and a client may not write
/// (nor a schema declare).
pub const SYSTEM_FIELDS: &[&str] = &["id"];

/// At most this many declared fields per type.
pub const MAX_FIELDS: usize = 100;
/// At most this many key fields.
pub const MAX_KEY_FIELDS: usize = 5;
/// At most this many values in an `enum`.
pub const MAX_ENUM_VALUES: usize = 100;
/// At most this many declared relations per type.
pub const MAX_RELATIONS: usize = 20;

/// One problem with a document or a schema, naming the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldViolation {
    pub field: String,
    pub message: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The kind of value a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum FieldKind {
    String,
    Integer,
    Number,
    Boolean,
    /// An RFC 3339 date-time; stored in UTC with microseconds, so stored values sort in time
    /// order as strings.
    Timestamp,
    /// Any JSON value; its inside can be filtered by path.
    Json,
    /// The id of a record of the type named by `references`.
    Reference,
}

impl FieldKind {
    /// Whether a field of this kind can be unique, indexed or sorted on.
    pub fn is_scalar(self) -> bool {
        !matches!(self, Self::Json)
    }
}

/// What deleting a referenced record does to the records that reference it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnDelete {
    /// The delete is refused while a record references it.
    #[default]
    Restrict,
    /// The referencing field is removed from every referencing record, in the same commit.
    Nullify,
}

/// What deleting a record does to the relations of other records that point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RelationOnDelete {
    /// The relations pointing at the record are removed, in the same commit.
    #[default]
    Unlink,
    /// The delete is refused while a relation points at the record.
    Restrict,
}

/// One declared relation: typed, directed edges from records of this type to records of
/// the type `to`, many to many. Edges are not fields of the document: they are linked and
/// unlinked on their own (`/v1/{entity}/{id}/relations/{relation}/{target}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelationSpec {
    /// The type of the records the relation points at.
    pub to: EntityTypeName,
    /// What deleting a record this relation points at does (default `unlink`). Deleting the
    /// record a relation starts from always removes its relations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<RelationOnDelete>,
}

impl RelationSpec {
    pub fn on_delete(&self) -> RelationOnDelete {
        self.on_delete.unwrap_or_default()
    }
}

/// One declared field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldSpec {
    #[serde(rename = "type")]
    pub kind: FieldKind,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    /// No two live records of the type hold the same value.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unique: bool,
    /// Filters and sorts on the field use an index.
    #[serde(default, skip_serializing_if = "is_false")]
    pub indexed: bool,
    /// The allowed values (strings or numbers).
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub enum_values: Option<Vec<Value>>,
    /// The longest allowed string, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// For `reference` fields: the referenced type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<EntityTypeName>,
    /// For `reference` fields: what deleting the referenced record does (default `restrict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<OnDelete>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl FieldSpec {
    pub fn on_delete(&self) -> OnDelete {
        self.on_delete.unwrap_or_default()
    }
}

/// The schema of an entity type.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schema {
    /// The fields whose values make the record id, joined with `:`. Empty: the id is the
    /// body's `id`, or generated.
    #[serde(default)]
    pub key: Vec<String>,
    /// Accept fields the schema does not declare.
    #[serde(default)]
    pub schemaless: bool,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
    /// The relations from records of this type, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub relations: BTreeMap<String, RelationSpec>,
}

/// Whether `name` can name a field: a letter or `_`, then up to 62 letters, digits or `_`.
pub fn valid_field_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 63
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The canonical form of a timestamp: UTC, microseconds.
pub fn normalize_timestamp(raw: &str) -> Option<String> {
    DateTime::parse_from_rfc3339(raw).ok().map(|t| {
        t.with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    })
}

impl Schema {
    /// A schemaless type without declared fields: anything goes.
    pub fn open() -> Self {
        Self {
            schemaless: true,
            ..Self::default()
        }
    }

    /// Problems of the schema itself. `type_exists` tells whether a referenced type exists.
    pub fn check(
        &self,
        own_name: &EntityTypeName,
        type_exists: impl Fn(&EntityTypeName) -> bool,
    ) -> Vec<FieldViolation> {
        let mut problems = Vec::new();
        if self.fields.len() > MAX_FIELDS {
            problems.push(FieldViolation::new(
                "fields",
                format!("at most {MAX_FIELDS} fields"),
            ));
        }
        if self.key.len() > MAX_KEY_FIELDS {
            problems.push(FieldViolation::new(
                "key",
                format!("at most {MAX_KEY_FIELDS} key fields"),
            ));
        }
        for (i, key) in self.key.iter().enumerate() {
            let at = format!("key[{i}]");
            if self.key[..i].contains(key) {
                problems.push(FieldViolation::new(at, format!("'{key}' is listed twice")));
                continue;
            }
            match self.fields.get(key) {
                None => problems.push(FieldViolation::new(
                    at,
                    format!("'{key}' is not a declared field"),
                )),
                Some(spec) => {
                    if !spec.required {
                        problems.push(FieldViolation::new(
                            format!("fields.{key}.required"),
                            "a key field must be required",
                        ));
                    }
                    if !matches!(
                        spec.kind,
                        FieldKind::String | FieldKind::Integer | FieldKind::Reference
                    ) {
                        problems.push(FieldViolation::new(
                            format!("fields.{key}.type"),
                            "a key field must be a string, an integer or a reference",
                        ));
                    }
                }
            }
        }
        for (name, spec) in &self.fields {
            let at = |what: &str| format!("fields.{name}{what}");
            if !valid_field_name(name) {
                problems.push(FieldViolation::new(
                    at(""),
                    "a field name starts with a letter or '_' and has at most 63 letters, digits or '_'",
                ));
            }
            if SYSTEM_FIELDS.contains(&name.as_str()) {
                problems.push(FieldViolation::new(
                    at(""),
                    "is managed by the gateway and cannot be declared",
                ));
            }
            if (spec.unique || spec.indexed) && !spec.kind.is_scalar() {
                problems.push(FieldViolation::new(
                    at(".type"),
                    "a json field cannot be unique or indexed",
                ));
            }
            if spec.max_length.is_some() && spec.kind != FieldKind::String {
                problems.push(FieldViolation::new(
                    at(".maxLength"),
                    "only string fields have a maximum length",
                ));
            }
            if let Some(values) = &spec.enum_values {
                let fits = |v: &Value| match spec.kind {
                    FieldKind::String => v.is_string(),
                    FieldKind::Integer => v.is_i64() || v.is_u64(),
                    FieldKind::Number => v.is_number(),
                    _ => false,
                };
                if !matches!(
                    spec.kind,
                    FieldKind::String | FieldKind::Integer | FieldKind::Number
                ) {
                    problems.push(FieldViolation::new(
                        at(".enum"),
                        "only string, integer and number fields have enum values",
                    ));
                } else if values.is_empty() || values.len() > MAX_ENUM_VALUES {
                    problems.push(FieldViolation::new(
                        at(".enum"),
                        format!("1 to {MAX_ENUM_VALUES} values"),
                    ));
                } else if !values.iter().all(fits) {
                    problems.push(FieldViolation::new(
                        at(".enum"),
                        "every value must be of the field's type",
                    ));
                }
            }
            match (spec.kind, &spec.references) {
                (FieldKind::Reference, None) => problems.push(FieldViolation::new(
                    at(".references"),
                    "a reference field names the type it references",
                )),
                (FieldKind::Reference, Some(target)) => {
                    if target != own_name && !type_exists(target) {
                        problems.push(FieldViolation::new(
                            at(".references"),
                            format!("no entity type '{target}'"),
                        ));
                    }
                    if spec.on_delete() == OnDelete::Nullify && spec.required {
                        problems.push(FieldViolation::new(
                            at(".onDelete"),
                            "a required field cannot be nullified",
                        ));
                    }
                }
                (_, Some(_)) => problems.push(FieldViolation::new(
                    at(".references"),
                    "only reference fields reference a type",
                )),
                (_, None) => {}
            }
            if spec.on_delete.is_some() && spec.kind != FieldKind::Reference {
                problems.push(FieldViolation::new(
                    at(".onDelete"),
                    "only reference fields have onDelete",
                ));
            }
        }
        if self.relations.len() > MAX_RELATIONS {
            problems.push(FieldViolation::new(
                "relations",
                format!("at most {MAX_RELATIONS} relations"),
            ));
        }
        for (name, spec) in &self.relations {
            let at = |what: &str| format!("relations.{name}{what}");
            if !valid_field_name(name) {
                problems.push(FieldViolation::new(
                    at(""),
                    "a relation name starts with a letter or '_' and has at most 63 letters, digits or '_'",
                ));
            }
            if self.fields.contains_key(name) || SYSTEM_FIELDS.contains(&name.as_str()) {
                problems.push(FieldViolation::new(
                    at(""),
                    "a relation cannot have the name of a field",
                ));
            }
            if spec.to != *own_name && !type_exists(&spec.to) {
                problems.push(FieldViolation::new(
                    at(".to"),
                    format!("no entity type '{}'", spec.to),
                ));
            }
        }
        problems
    }

    /// The changes from `self` to `new` that records written under `self` might not satisfy.
    /// Allowed: new optional fields, dropping `required` or `unique`, a longer or removed
    /// maximum length, more enum values or none, changes of `indexed` and `onDelete`, and new relations
    /// (a relation keeps its target type and is never removed).
    pub fn incompatibilities(&self, new: &Schema) -> Vec<FieldViolation> {
        let mut problems = Vec::new();
        if self.key != new.key {
            problems.push(FieldViolation::new("key", "the key fields cannot change"));
        }
        if self.schemaless && !new.schemaless {
            problems.push(FieldViolation::new(
                "schemaless",
                "a schemaless type cannot become strict: records may hold undeclared fields",
            ));
        }
        for (name, old) in &self.fields {
            let at = |what: &str| format!("fields.{name}{what}");
            let Some(spec) = new.fields.get(name) else {
                problems.push(FieldViolation::new(
                    at(""),
                    "a field cannot be removed: records may hold it",
                ));
                continue;
            };
            if spec.kind != old.kind || spec.references != old.references {
                problems.push(FieldViolation::new(
                    at(".type"),
                    "the type of a field cannot change",
                ));
            }
            if spec.required && !old.required {
                problems.push(FieldViolation::new(
                    at(".required"),
                    "an optional field cannot become required: records may lack it",
                ));
            }
            if spec.unique && !old.unique {
                problems.push(FieldViolation::new(
                    at(".unique"),
                    "a field cannot become unique: records may already share values",
                ));
            }
            let shorter = match (old.max_length, spec.max_length) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(old), Some(new)) => new < old,
            };
            if shorter {
                problems.push(FieldViolation::new(
                    at(".maxLength"),
                    "the maximum length cannot shrink",
                ));
            }
            let narrower = match (&old.enum_values, &spec.enum_values) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(old), Some(new)) => old.iter().any(|v| !new.contains(v)),
            };
            if narrower {
                problems.push(FieldViolation::new(
                    at(".enum"),
                    "enum values cannot be removed",
                ));
            }
        }
        for (name, old) in &self.relations {
            match new.relations.get(name) {
                None => problems.push(FieldViolation::new(
                    format!("relations.{name}"),
                    "a relation cannot be removed: records may be linked by it",
                )),
                Some(spec) if spec.to != old.to => problems.push(FieldViolation::new(
                    format!("relations.{name}.to"),
                    "the type a relation points at cannot change",
                )),
                Some(_) => {}
            }
        }
        for (name, spec) in &new.fields {
            if self.fields.contains_key(name) {
                continue;
            }
            if spec.required {
                problems.push(FieldViolation::new(
                    format!("fields.{name}.required"),
                    "a new field must be optional: existing records lack it",
                ));
            }
            if spec.unique && self.schemaless {
                problems.push(FieldViolation::new(
                    format!("fields.{name}.unique"),
                    "a new field of a schemaless type cannot be unique: records may already share values",
                ));
            }
        }
        problems
    }

    /// Checks a record's whole document and puts timestamps in their canonical form. (System
    /// fields such as `id` are the `Entity` aggregate's to refuse.)
    pub fn validate(&self, data: &mut Map<String, Value>) -> Vec<FieldViolation> {
        let mut problems = Vec::new();
        for (name, spec) in &self.fields {
            let present = data.get(name).is_some_and(|v| !v.is_null());
            if spec.required && !present {
                problems.push(FieldViolation::new(name.clone(), "is required"));
            }
        }
        for (name, value) in data.iter_mut() {
            let Some(spec) = self.fields.get(name) else {
                if !self.schemaless {
                    problems.push(FieldViolation::new(
                        name.clone(),
                        "is not a field of this entity type",
                    ));
                }
                continue;
            };
            if value.is_null() {
                continue;
            }
            if let Some(message) = check_value(spec, value) {
                problems.push(FieldViolation::new(name.clone(), message));
            }
        }
        problems
    }

    /// The record id that the key fields of `data` make, when the type has key fields.
    pub fn key_of(&self, data: &Map<String, Value>) -> Result<Option<EntityId>, FieldViolation> {
        if self.key.is_empty() {
            return Ok(None);
        }
        let mut parts = Vec::with_capacity(self.key.len());
        for field in &self.key {
            let part = match data.get(field) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
                _ => return Err(FieldViolation::new(field.clone(), "is required")),
            };
            if self.key.len() > 1 && part.contains(':') {
                return Err(FieldViolation::new(
                    field.clone(),
                    "a part of a composite key cannot contain ':'",
                ));
            }
            parts.push(part);
        }
        EntityId::parse(parts.join(":"))
            .map(Some)
            .map_err(|e| FieldViolation::new(self.key[0].clone(), format!("makes an id that {e}")))
    }

    /// The unique fields.
    pub fn unique_fields(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|(_, spec)| spec.unique)
            .map(|(name, _)| name.as_str())
    }

    /// Every type the schema points at, through reference fields or relations (possibly
    /// more than once).
    pub fn referenced_types(&self) -> impl Iterator<Item = &EntityTypeName> {
        self.reference_fields()
            .map(|(_, target)| target)
            .chain(self.relations.values().map(|spec| &spec.to))
    }

    /// The reference fields and the types they reference.
    pub fn reference_fields(&self) -> impl Iterator<Item = (&str, &EntityTypeName)> {
        self.fields
            .iter()
            .filter_map(|(name, spec)| spec.references.as_ref().map(|t| (name.as_str(), t)))
    }
}

fn check_value(spec: &FieldSpec, value: &mut Value) -> Option<String> {
    let fits = match spec.kind {
        FieldKind::String => value.is_string(),
        FieldKind::Integer => value.is_i64() || value.is_u64(),
        FieldKind::Number => value.is_number(),
        FieldKind::Boolean => value.is_boolean(),
        FieldKind::Json => true,
        FieldKind::Reference => value.as_str().is_some_and(|s| EntityId::parse(s).is_ok()),
        FieldKind::Timestamp => match value.as_str().and_then(normalize_timestamp) {
            Some(canonical) => {
                *value = Value::String(canonical);
                true
            }
            None => false,
        },
    };
    if !fits {
        return Some(
            match spec.kind {
                FieldKind::String => "must be a string",
                FieldKind::Integer => "must be an integer",
                FieldKind::Number => "must be a number",
                FieldKind::Boolean => "must be true or false",
                FieldKind::Timestamp => "must be an RFC 3339 date-time",
                FieldKind::Reference => "must be the id of a record",
                FieldKind::Json => unreachable!("any JSON fits"),
            }
            .to_string(),
        );
    }
    if let (Some(max), Some(s)) = (spec.max_length, value.as_str())
        && s.chars().count() > max as usize
    {
        return Some(format!("must be at most {max} characters long"));
    }
    if let Some(values) = &spec.enum_values
        && !values.contains(value)
    {
        let allowed: Vec<String> = values.iter().map(Value::to_string).collect();
        return Some(format!("must be one of {}", allowed.join(", ")));
    }
    None
}

/// What an administrator may ask of an entity type.
#[derive(Debug, Clone, PartialEq)]
pub enum EntityTypeCommand {
    /// Define the type. Referenced types must exist: `missing_references` lists those that
    /// do not (the caller looked them up).
    DefineEntityType {
        name: EntityTypeName,
        schema: Schema,
        missing_references: Vec<EntityTypeName>,
    },
    /// Replace the schema by a compatible one.
    ChangeEntityType {
        schema: Schema,
        missing_references: Vec<EntityTypeName>,
        expected_version: Option<u64>,
    },
}

impl EntityTypeCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::DefineEntityType { .. } => "DefineEntityType",
            Self::ChangeEntityType { .. } => "ChangeEntityType",
        }
    }
}

/// What happened to an entity type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EntityTypeEvent {
    /// An entity type was defined.
    #[serde(rename_all = "camelCase")]
    EntityTypeDefined {
        name: EntityTypeName,
        schema: Schema,
    },
    /// An entity type's schema was changed.
    #[serde(rename_all = "camelCase")]
    EntityTypeChanged {
        name: EntityTypeName,
        schema: Schema,
    },
}

impl DomainEvent for EntityTypeEvent {
    fn event_type(&self) -> String {
        match self {
            Self::EntityTypeDefined { .. } => "EntityTypeDefined",
            Self::EntityTypeChanged { .. } => "EntityTypeChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        <Self as crate::versioned::Versioned>::VERSION.to_string()
    }
}

impl crate::versioned::Versioned for EntityTypeEvent {
    const VERSION: &'static str = "1.0";
}

/// Why a command on an entity type was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntityTypeError {
    #[error("the entity type already exists")]
    AlreadyExists,
    #[error("no such entity type")]
    NotFound,
    #[error("the schema is invalid")]
    Invalid(Vec<FieldViolation>),
    #[error("the change is incompatible with records written under the current schema")]
    Incompatible(Vec<FieldViolation>),
    #[error("the entity type was modified: expected version {expected}, current version {actual}")]
    VersionConflict { expected: u64, actual: u64 },
}

/// The state of one entity type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityType {
    name: Option<EntityTypeName>,
    schema: Schema,
    version: u64,
}

impl EntityType {
    pub fn exists(&self) -> bool {
        self.name.is_some()
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn version(&self) -> u64 {
        self.version
    }
}

fn check_schema(
    name: &EntityTypeName,
    schema: &Schema,
    missing: &[EntityTypeName],
) -> Result<(), EntityTypeError> {
    let problems = schema.check(name, |t| !missing.contains(t));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EntityTypeError::Invalid(problems))
    }
}

impl Aggregate for EntityType {
    const TYPE: &'static str = "EntityType";
    type Command = EntityTypeCommand;
    type Event = EntityTypeEvent;
    type Error = EntityTypeError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            EntityTypeCommand::DefineEntityType {
                name,
                schema,
                missing_references,
            } => {
                if self.exists() {
                    return Err(EntityTypeError::AlreadyExists);
                }
                check_schema(&name, &schema, &missing_references)?;
                sink.write(EntityTypeEvent::EntityTypeDefined { name, schema }, self)
                    .await;
            }
            EntityTypeCommand::ChangeEntityType {
                schema,
                missing_references,
                expected_version,
            } => {
                let Some(name) = self.name.clone() else {
                    return Err(EntityTypeError::NotFound);
                };
                if let Some(expected) = expected_version
                    && expected != self.version
                {
                    return Err(EntityTypeError::VersionConflict {
                        expected,
                        actual: self.version,
                    });
                }
                check_schema(&name, &schema, &missing_references)?;
                let problems = self.schema.incompatibilities(&schema);
                if !problems.is_empty() {
                    return Err(EntityTypeError::Incompatible(problems));
                }
                if schema == self.schema {
                    return Ok(());
                }
                sink.write(EntityTypeEvent::EntityTypeChanged { name, schema }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            EntityTypeEvent::EntityTypeDefined { name, schema }
            | EntityTypeEvent::EntityTypeChanged { name, schema } => {
                self.name = Some(name);
                self.schema = schema;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema(value: Value) -> Schema {
        serde_json::from_value(value).unwrap()
    }

    fn users() -> EntityTypeName {
        EntityTypeName::parse("users").unwrap()
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_document_is_checked_field_by_field() {
        let s = schema(json!({"fields": {
            "email": {"type": "string", "required": true, "maxLength": 10},
            "age": {"type": "integer"},
            "plan": {"type": "string", "enum": ["free", "pro"]},
            "at": {"type": "timestamp"}
        }}));
        let mut doc = object(json!({"age": 1.5, "plan": "gold", "extra": 1, "at": "nope"}));
        let fields: Vec<String> = s.validate(&mut doc).into_iter().map(|v| v.field).collect();
        assert_eq!(fields, vec!["email", "age", "at", "extra", "plan"]);
        let mut ok = object(json!({"email": "a@b.c", "at": "2026-03-01T10:00:00+01:00"}));
        assert!(s.validate(&mut ok).is_empty());
        assert_eq!(ok["at"], json!("2026-03-01T09:00:00.000000Z"));
    }

    #[test]
    fn composite_keys_join_their_parts_with_colons() {
        let s = schema(json!({"key": ["agent", "user"], "fields": {
            "agent": {"type": "string", "required": true},
            "user": {"type": "integer", "required": true}
        }}));
        let id = s.key_of(&object(json!({"agent": "a", "user": 7}))).unwrap();
        assert_eq!(id.unwrap().as_str(), "a:7");
        assert!(
            s.key_of(&object(json!({"agent": "a:b", "user": 7})))
                .is_err()
        );
        assert!(s.key_of(&object(json!({"agent": "a"}))).is_err());
    }

    #[test]
    fn a_schema_names_its_own_mistakes() {
        let s = schema(json!({"key": ["nope"], "fields": {
            "meta": {"type": "json", "unique": true},
            "owner": {"type": "reference"},
            "n": {"type": "integer", "maxLength": 3},
            "team": {"type": "reference", "references": "teams", "onDelete": "nullify", "required": true}
        }}));
        let fields: Vec<String> = s
            .check(&users(), |_| false)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "key[0]",
                "fields.meta.type",
                "fields.n.maxLength",
                "fields.owner.references",
                "fields.team.references",
                "fields.team.onDelete"
            ]
        );
    }

    #[test]
    fn adding_an_optional_field_is_compatible_and_narrowing_is_not() {
        let old = schema(json!({"fields": {
            "name": {"type": "string", "maxLength": 10, "enum": ["a", "b"]},
            "age": {"type": "integer"}
        }}));
        let added = schema(json!({"fields": {
            "name": {"type": "string", "maxLength": 20, "enum": ["a", "b", "c"]},
            "age": {"type": "integer", "indexed": true},
            "nick": {"type": "string"}
        }}));
        assert!(old.incompatibilities(&added).is_empty());
        let narrowed = schema(json!({"fields": {
            "name": {"type": "string", "maxLength": 5, "enum": ["a"], "unique": true},
            "nick": {"type": "string", "required": true}
        }}));
        let fields: Vec<String> = old
            .incompatibilities(&narrowed)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "fields.age",
                "fields.name.unique",
                "fields.name.maxLength",
                "fields.name.enum",
                "fields.nick.required"
            ]
        );
    }

    mod given_when_then {
        use cqrs_es::test::TestFramework;
        use serde_json::json;

        use super::super::*;

        fn name(text: &str) -> EntityTypeName {
            EntityTypeName::parse(text).unwrap()
        }

        fn schema(value: Value) -> Schema {
            serde_json::from_value(value).unwrap()
        }

        fn v1() -> Schema {
            schema(json!({"fields": {"email": {"type": "string", "required": true}}}))
        }

        fn v2() -> Schema {
            schema(json!({"fields": {
                "email": {"type": "string", "required": true},
                "age": {"type": "integer"}
            }}))
        }

        fn defined() -> EntityTypeEvent {
            EntityTypeEvent::EntityTypeDefined {
                name: name("users"),
                schema: v1(),
            }
        }

        fn change(schema: Schema, expected_version: Option<u64>) -> EntityTypeCommand {
            EntityTypeCommand::ChangeEntityType {
                schema,
                missing_references: Vec::new(),
                expected_version,
            }
        }

        #[test]
        fn a_type_is_defined_once() {
            let define = || EntityTypeCommand::DefineEntityType {
                name: name("users"),
                schema: v1(),
                missing_references: Vec::new(),
            };
            TestFramework::<EntityType>::with(())
                .given_no_previous_events()
                .when(define())
                .then_expect_events(vec![defined()]);
            TestFramework::<EntityType>::with(())
                .given(vec![defined()])
                .when(define())
                .then_expect_error(EntityTypeError::AlreadyExists);
        }

        #[test]
        fn a_type_that_references_a_missing_type_is_refused() {
            let with_reference = schema(json!({"fields": {
                "team": {"type": "reference", "references": "teams"}
            }}));
            TestFramework::<EntityType>::with(())
                .given_no_previous_events()
                .when(EntityTypeCommand::DefineEntityType {
                    name: name("users"),
                    schema: with_reference,
                    missing_references: vec![name("teams")],
                })
                .then_expect_error_message("the schema is invalid");
        }

        #[test]
        fn a_compatible_change_is_recorded_and_a_repeat_changes_nothing() {
            TestFramework::<EntityType>::with(())
                .given(vec![defined()])
                .when(change(v2(), Some(1)))
                .then_expect_events(vec![EntityTypeEvent::EntityTypeChanged {
                    name: name("users"),
                    schema: v2(),
                }]);
            TestFramework::<EntityType>::with(())
                .given(vec![defined()])
                .when(change(v1(), None))
                .then_expect_events(vec![]);
        }

        #[test]
        fn an_incompatible_change_a_stale_version_and_a_missing_type_are_refused() {
            let removed = schema(json!({"fields": {"age": {"type": "integer"}}}));
            TestFramework::<EntityType>::with(())
                .given(vec![defined()])
                .when(change(removed, None))
                .then_expect_error(EntityTypeError::Incompatible(vec![FieldViolation::new(
                    "fields.email",
                    "a field cannot be removed: records may hold it",
                )]));
            TestFramework::<EntityType>::with(())
                .given(vec![defined()])
                .when(change(v2(), Some(3)))
                .then_expect_error(EntityTypeError::VersionConflict {
                    expected: 3,
                    actual: 1,
                });
            TestFramework::<EntityType>::with(())
                .given_no_previous_events()
                .when(change(v2(), None))
                .then_expect_error(EntityTypeError::NotFound);
        }
    }
}
