//! The `entity_types` read model: every tenant's entity types and their current schemas. The
//! projector also creates, on `entities`, the index of every `indexed` or `unique` field, on the same
//! expression the query compiler reads the field with ([`crate::entity_query`]).

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

/// The names and `CREATE INDEX` statements of the indexes the indexed and unique fields of
/// `schema` need.
fn indexes(backend: eventlog::Backend, schema: &Schema) -> impl Iterator<Item = (String, String)> {
    schema
        .fields
        .iter()
        .filter(|(_, spec)| spec.indexed || spec.unique)
        .filter_map(|(name, spec)| Kind::of(spec.kind).map(|kind| (name, kind)))
        .map(move |(name, kind)| index_statement(backend, name, kind))
}

/// The `CREATE INDEX` statements the indexed and unique fields of `schema` need.
pub fn index_statements(backend: eventlog::Backend, schema: &Schema) -> Vec<String> {
    indexes(backend, schema).map(|(_, sql)| sql).collect()
}

/// The names of the indexes the indexed and unique fields of `schema` need (one index serves
/// every type and tenant with a field of that name and kind).
pub fn index_names(backend: eventlog::Backend, schema: &Schema) -> Vec<String> {
    indexes(backend, schema).map(|(name, _)| name).collect()
}

#[async_trait]
impl Projector for EntityTypesProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["entity_types"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[EntityType::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[RecordedEvent],
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
            let statements = index_statements(tx.backend(), &schema);
            tx.execute(
                Statement::new(&upsert)
                    .bind(event.tenant_id.as_str())
                    .bind(name.as_str())
                    .bind(Json(&schema))
                    .bind(event.sequence)
                    .bind(event.recorded_at),
            )
            .await?;
            for statement in &statements {
                tx.execute(Statement::new(statement)).await?;
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
