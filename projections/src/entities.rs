//! The `entities` read model: the current document of every record of every entity type.
//!
//! One row per record, keyed by `(tenant_id, entity_type, id)`. Deleted records keep their
//! row with `deleted_at` set, so the API can answer 404 for them while admins may still list
//! them. Timestamps come from the events, so a rebuild reproduces the table row for row.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::entity::{Entity, EntityEvent};
use eventlog::{Db, RecordedEvent, Tx};
use serde_json::Value;
use sqlx::Row;
use sqlx::types::Json;

use crate::{ProjectionError, Projector, Target};

/// Builds the `entities` table from `Entity*` events.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntitiesProjector;

/// The projector's name.
pub const NAME: &str = "entities";

#[async_trait]
impl Projector for EntitiesProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["entities"]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let table = target.table("entities");
        let insert = format!(
            "INSERT INTO {table} (tenant_id, entity_type, id, data, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (tenant_id, entity_type, id) DO NOTHING"
        );
        let update = format!(
            "UPDATE {table} SET data = $4, version = $5, updated_at = $6 \
             WHERE tenant_id = $1 AND entity_type = $2 AND id = $3 AND version < $5"
        );
        let delete = format!(
            "UPDATE {table} SET deleted_at = $4, version = $5, updated_at = $4 \
             WHERE tenant_id = $1 AND entity_type = $2 AND id = $3 AND version < $5"
        );
        for event in events.iter().filter(|e| e.aggregate_type == Entity::TYPE) {
            let decoded =
                event
                    .decode::<EntityEvent>()
                    .map_err(|source| ProjectionError::Decode {
                        event_id: event.event_id,
                        source,
                    })?;
            let tenant = event.tenant_id.as_str();
            let version = event.sequence;
            let at = event.recorded_at;
            eventlog::on_tx!(&mut *tx, conn => {
                match decoded {
                    EntityEvent::EntityCreated { entity_type, id, data } => {
                        sqlx::query(&insert)
                            .bind(tenant)
                            .bind(entity_type.as_str())
                            .bind(id.as_str())
                            .bind(Json(Value::Object(data)))
                            .bind(version)
                            .bind(at)
                            .execute(&mut *conn)
                            .await?;
                    }
                    EntityEvent::EntityUpdated { entity_type, id, data, .. } => {
                        sqlx::query(&update)
                            .bind(tenant)
                            .bind(entity_type.as_str())
                            .bind(id.as_str())
                            .bind(Json(Value::Object(data)))
                            .bind(version)
                            .bind(at)
                            .execute(&mut *conn)
                            .await?;
                    }
                    EntityEvent::EntityDeleted { entity_type, id } => {
                        sqlx::query(&delete)
                            .bind(tenant)
                            .bind(entity_type.as_str())
                            .bind(id.as_str())
                            .bind(at)
                            .bind(version)
                            .execute(&mut *conn)
                            .await?;
                    }
                }
            });
        }
        Ok(())
    }
}

/// One record as the read model holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRecord {
    pub entity_type: String,
    pub id: String,
    pub data: Value,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "entity_type, id, data, version, created_at, updated_at, deleted_at";

macro_rules! decode_record {
    ($row:expr) => {{
        let row = $row;
        let data: Json<Value> = row.try_get("data")?;
        EntityRecord {
            entity_type: row.try_get("entity_type")?,
            id: row.try_get("id")?,
            data: data.0,
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            deleted_at: row.try_get("deleted_at")?,
        }
    }};
}

/// One record of the tenant, deleted or not.
pub async fn get(
    db: &Db,
    tenant_id: &str,
    entity_type: &str,
    id: &str,
) -> Result<Option<EntityRecord>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM entities WHERE tenant_id = $1 AND entity_type = $2 AND id = $3"
    );
    let record = eventlog::on_pool!(db, pool => {
        match sqlx::query(&sql)
            .bind(tenant_id)
            .bind(entity_type)
            .bind(id)
            .fetch_optional(pool)
            .await?
        {
            Some(row) => Some(decode_record!(&row)),
            None => None,
        }
    });
    Ok(record)
}

/// A page of the tenant's records of one type, ordered by id, after the id `after`.
pub async fn list(
    db: &Db,
    tenant_id: &str,
    entity_type: &str,
    after: Option<&str>,
    limit: u32,
    include_deleted: bool,
) -> Result<Vec<EntityRecord>, sqlx::Error> {
    let deleted = if include_deleted {
        ""
    } else {
        "AND deleted_at IS NULL"
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM entities \
         WHERE tenant_id = $1 AND entity_type = $2 AND id > $3 {deleted} \
         ORDER BY id LIMIT $4"
    );
    let records = eventlog::on_pool!(db, pool => {
        let rows = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(entity_type)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
        rows.iter().map(|row| Ok(decode_record!(row))).collect::<Result<Vec<_>, sqlx::Error>>()?
    });
    Ok(records)
}
