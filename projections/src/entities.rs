//! The `entities` read model: the current document of every record of every entity type.
//!
//! One row per record, keyed by `(tenant_id, entity_type, id)`. Deleted records keep their
//! row with `deleted_at` set, so the API can answer 404 for them while admins may still list
//! them. Timestamps come from the events, so a rebuild reproduces the table row for row.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::entity::{Entity, EntityEvent};
use eventlog::{Backend, Db, RecordedEvent, Statement, Tx};
use serde_json::Value;
use sqlx::types::Json;

use crate::entity_query::{After, Filter, Scalar, SortKey, Sql, compile, compile_after, order_by};
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

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Entity::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("entities");
        let update = format!(
            "UPDATE {table} SET data = $4, version = $5, updated_at = $6 \
             WHERE tenant_id = $1 AND entity_type = $2 AND id = $3 AND version < $5"
        );
        let delete = format!(
            "UPDATE {table} SET deleted_at = $4, version = $5, updated_at = $4 \
             WHERE tenant_id = $1 AND entity_type = $2 AND id = $3 AND version < $5"
        );
        // Creates in a row are inserted together; any other event first writes them out, so
        // every record's events apply in log order.
        let mut created: Vec<NewRow> = Vec::new();
        for event in events.iter().filter(|e| e.aggregate_type == Entity::TYPE) {
            let decoded = crate::decode::<EntityEvent>(event)?;
            let tenant = event.tenant_id.as_str();
            let version = event.sequence;
            let at = event.recorded_at;
            if let EntityEvent::EntityCreated {
                entity_type,
                id,
                data,
            } = decoded
            {
                created.push(NewRow {
                    tenant: event.tenant_id.clone(),
                    entity_type: entity_type.to_string(),
                    id: id.to_string(),
                    data: Value::Object(data),
                    version,
                    at,
                });
                continue;
            }
            insert_created(tx, &table, &mut created).await?;
            match decoded {
                EntityEvent::EntityCreated { .. } => unreachable!("inserted above"),
                EntityEvent::EntityUpdated {
                    entity_type,
                    id,
                    data,
                    ..
                }
                | EntityEvent::EntityReplaced {
                    entity_type,
                    id,
                    data,
                } => {
                    tx.execute(
                        Statement::new(&update)
                            .bind(tenant)
                            .bind(entity_type.as_str())
                            .bind(id.as_str())
                            .bind(Json(Value::Object(data)))
                            .bind(version)
                            .bind(at),
                    )
                    .await?;
                }
                EntityEvent::EntityDeleted { entity_type, id } => {
                    tx.execute(
                        Statement::new(&delete)
                            .bind(tenant)
                            .bind(entity_type.as_str())
                            .bind(id.as_str())
                            .bind(at)
                            .bind(version),
                    )
                    .await?;
                }
            }
        }
        insert_created(tx, &table, &mut created).await?;
        Ok(())
    }
}

/// A record as its creation left it.
struct NewRow {
    tenant: String,
    entity_type: String,
    id: String,
    data: Value,
    version: i64,
    at: DateTime<Utc>,
}

/// Most records in one insert (seven bound values each).
const INSERT_CHUNK: usize = 500;

/// Inserts (and empties) `rows`, in statements of up to [`INSERT_CHUNK`] rows; a record
/// already in the table is left as it is.
async fn insert_created(
    tx: &mut Tx,
    table: &str,
    rows: &mut Vec<NewRow>,
) -> Result<(), ProjectionError> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO {table} (tenant_id, entity_type, id, data, version, created_at, updated_at) \
             VALUES {} ON CONFLICT (tenant_id, entity_type, id) DO NOTHING",
            tx.backend().values(chunk.len(), 7)
        );
        // Full chunks (rebuilds, catch-up) share one prepared statement; the sizes of
        // live batches vary too much to keep one per size.
        let mut query =
            Statement::new(&sql).persistent(eventlog::sql::recurs(chunk.len(), INSERT_CHUNK));
        for row in chunk {
            query = query
                .bind(row.tenant.as_str())
                .bind(row.entity_type.as_str())
                .bind(row.id.as_str())
                .bind(Json(&row.data))
                .bind(row.version)
                .bind(row.at)
                .bind(row.at);
        }
        tx.execute(query).await?;
    }
    rows.clear();
    Ok(())
}

/// One record as the read model holds it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EntityRecord {
    pub entity_type: String,
    pub id: String,
    #[sqlx(try_from = "eventlog::json::DeepJson")]
    pub data: Value,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "entity_type, id, data, version, created_at, updated_at, deleted_at";

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
    db.fetch_optional_as::<EntityRecord>(
        Statement::new(&sql)
            .bind(tenant_id)
            .bind(entity_type)
            .bind(id),
    )
    .await
}

/// Records of the tenant by type and id (deleted ones included), for `expand`.
pub async fn get_many(
    db: &Db,
    tenant_id: &str,
    entity_type: &str,
    ids: &[String],
) -> Result<Vec<EntityRecord>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM entities WHERE tenant_id = $1 AND entity_type = $2 AND id IN ({})",
        placeholders.join(", ")
    );
    let mut query = Statement::new(&sql).bind(tenant_id).bind(entity_type);
    for id in ids {
        query.push(id.as_str());
    }
    db.fetch_all_as(query).await
}

/// What `GET /v1/{entity}` asks for.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub order: Vec<SortKey>,
    pub after: Option<After>,
    pub limit: u32,
    pub include_deleted: bool,
    pub count: bool,
}

/// A page of records and, when asked for, how many records match in all.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub records: Vec<EntityRecord>,
    pub total: Option<i64>,
}

/// Binds a compiled filter's values in order. A number is bound as text on PostgreSQL (the
/// filter casts it to `numeric`, exact at any size) and as an integer or a real on SQLite.
fn bind_all<'q>(
    mut statement: Statement<'q>,
    binds: &'q [Scalar],
    backend: Backend,
) -> Statement<'q> {
    for bind in binds {
        match bind {
            Scalar::Text(s) => statement.push(s.as_str()),
            Scalar::Bool(b) => statement.push(*b),
            Scalar::Number(n) => match backend {
                Backend::Postgres => statement.push(n.to_string()),
                Backend::Sqlite => match n.as_i64() {
                    Some(i) => statement.push(i),
                    None => statement.push(n.as_f64().unwrap_or(f64::NAN)),
                },
            },
        }
    }
    statement
}

/// A page of the tenant's records of one type: filtered, in the query's order, after its
/// cursor; `limit` rows at most.
pub async fn list(
    db: &Db,
    tenant_id: &str,
    entity_type: &str,
    query: &ListQuery,
) -> Result<ListPage, sqlx::Error> {
    let backend = db.backend();
    let mut conditions = Sql::default();
    conditions
        .text
        .push_str("tenant_id = $1 AND entity_type = $2");
    if !query.include_deleted {
        conditions.text.push_str(" AND deleted_at IS NULL");
    }
    if let Some(filter) = &query.filter {
        conditions.text.push_str(" AND ");
        compile(backend, filter, &mut conditions);
    }
    let count_sql = format!("SELECT COUNT(*) FROM entities WHERE {}", conditions.text);
    let count_binds = conditions.binds.len();
    if let Some(after) = &query.after {
        conditions.text.push_str(" AND ");
        compile_after(backend, &query.order, after, &mut conditions);
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM entities WHERE {} ORDER BY {} LIMIT {}",
        conditions.text,
        order_by(backend, &query.order),
        query.limit
    );
    // Planned with the values each time (an unnamed statement): a cached generic plan
    // cannot know how selective a filter is and may walk the whole type in id order.
    let statement = |sql| {
        Statement::new(sql)
            .persistent(false)
            .bind(tenant_id)
            .bind(entity_type)
    };
    let records = db
        .fetch_all_as::<EntityRecord>(bind_all(statement(&sql), &conditions.binds, backend))
        .await?;
    let total = if query.count {
        let count = bind_all(
            statement(&count_sql),
            &conditions.binds[..count_binds],
            backend,
        );
        Some(db.fetch_one(count).await?.try_get::<i64, _>(0)?)
    } else {
        None
    };
    Ok(ListPage { records, total })
}
