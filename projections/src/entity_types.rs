//! The `entity_types` read model: every tenant's entity types and their current schemas. The
//! projector also registers, in `entity_indexes`, the index on `entities` that every `indexed`
//! or `unique` field needs, on the same expression the query compiler reads the field with
//! ([`crate::entity_query`]); `workers::indexer` builds it in the background.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::entity_type::{EntityType, EntityTypeEvent, Schema};
use eventlog::{Db, RecordedEvent, Statement, Tx};
use sqlx::types::Json;

use crate::entity_query::{Kind, index_statement};
use crate::{ProjectionError, Projector, Target};

pub const NAME: &str = "entity_types";

#[derive(Debug, Clone, Copy, Default)]
pub struct EntityTypesProjector;

/// The field, index name and `CREATE INDEX` statement of every index the indexed and unique
/// fields of `schema` need.
fn field_indexes(
    backend: eventlog::Backend,
    schema: &Schema,
) -> impl Iterator<Item = (&str, String, String)> {
    schema
        .fields
        .iter()
        .filter(|(_, spec)| spec.indexed || spec.unique)
        .filter_map(|(field, spec)| Kind::of(spec.kind).map(|kind| (field, kind)))
        .map(move |(field, kind)| {
            let (name, sql) = index_statement(backend, field, kind);
            (field.as_str(), name, sql)
        })
}

/// The names and `CREATE INDEX` statements of the indexes `schema` needs.
fn indexes(backend: eventlog::Backend, schema: &Schema) -> impl Iterator<Item = (String, String)> {
    field_indexes(backend, schema).map(|(_, name, sql)| (name, sql))
}

/// The names of the indexes the indexed and unique fields of `schema` need (one index serves
/// every type and tenant with a field of that name and kind).
pub fn index_names(backend: eventlog::Backend, schema: &Schema) -> Vec<String> {
    indexes(backend, schema).map(|(name, _)| name).collect()
}

/// How far an index's build is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexStatus {
    /// The field it serves.
    pub field: String,
    pub name: String,
    /// `building`, `ready` or `failed`.
    pub status: String,
    /// Why the last build failed.
    pub error: Option<String>,
}

/// The indexes of each of `schemas`' indexed and unique fields, by field, with their builds'
/// status (`building` for one not registered yet: the projector is behind the schema), read
/// in one query.
pub async fn index_status(
    db: &Db,
    schemas: &[&Schema],
) -> Result<Vec<Vec<IndexStatus>>, sqlx::Error> {
    let wanted: Vec<Vec<(String, String)>> = schemas
        .iter()
        .map(|schema| {
            field_indexes(db.backend(), schema)
                .map(|(field, name, _)| (field.to_string(), name))
                .collect()
        })
        .collect();
    let names: std::collections::BTreeSet<&str> = wanted
        .iter()
        .flatten()
        .map(|(_, name)| name.as_str())
        .collect();
    let known: Vec<(String, String, Option<String>)> = if names.is_empty() {
        Vec::new()
    } else {
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT name, status, error FROM entity_indexes WHERE name IN ({})",
            placeholders.join(", ")
        );
        let mut statement = Statement::new(&sql);
        for name in &names {
            statement.push(*name);
        }
        db.fetch_all_as(statement).await?
    };
    Ok(wanted
        .into_iter()
        .map(|fields| {
            fields
                .into_iter()
                .map(|(field, name)| {
                    let found = known.iter().find(|(known, _, _)| *known == name);
                    IndexStatus {
                        status: found.map_or_else(|| "building".into(), |(_, s, _)| s.clone()),
                        error: found.and_then(|(_, _, e)| e.clone()),
                        field,
                        name,
                    }
                })
                .collect()
        })
        .collect())
}

#[async_trait]
impl Projector for EntityTypesProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["entity_types"]
    }

    fn reads_metadata(&self) -> bool {
        false
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[EntityType::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("entity_types");
        let upsert = format!(
            "INSERT INTO {table} (tenant_id, name, schema, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET schema = excluded.schema, \
             version = excluded.version, updated_at = excluded.updated_at \
             WHERE {table}.version < excluded.version"
        );
        for event in events
            .iter()
            .filter(|e| e.aggregate_type == EntityType::TYPE)
        {
            let decoded: EntityTypeEvent = crate::decode(event)?;
            let (EntityTypeEvent::EntityTypeDefined { name, schema }
            | EntityTypeEvent::EntityTypeChanged { name, schema }) = decoded;
            let indexes: Vec<(String, String)> = indexes(tx.backend(), &schema).collect();
            tx.execute(
                Statement::new(&upsert)
                    .bind(event.tenant_id.as_str())
                    .bind(name.as_str())
                    .bind(Json(&schema))
                    .bind(event.sequence)
                    .bind(event.recorded_at),
            )
            .await?;
            // Built in the background (workers::indexer); a query works without it meanwhile.
            for (index, definition) in &indexes {
                tx.execute(
                    Statement::new(
                        "INSERT INTO entity_indexes (name, definition, status, updated_at) \
                         VALUES ($1, $2, 'building', $3) ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(index.as_str())
                    .bind(definition.as_str())
                    .bind(event.recorded_at),
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// One entity type as the read model holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityTypeRecord {
    pub name: String,
    pub schema: Schema,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The tenant's entity types, by name.
pub async fn list(db: &Db, tenant_id: &str) -> Result<Vec<EntityTypeRecord>, sqlx::Error> {
    let sql = "SELECT name, schema, version, created_at, updated_at FROM entity_types \
               WHERE tenant_id = $1 ORDER BY name";
    let rows = db.fetch_all(Statement::new(sql).bind(tenant_id)).await?;
    rows.iter()
        .map(|row| {
            let schema: Json<Schema> = row.try_get("schema")?;
            Ok(EntityTypeRecord {
                name: row.try_get("name")?,
                schema: schema.0,
                version: row.try_get("version")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}
