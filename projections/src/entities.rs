//! The `entities` read model: the current document of every record of every entity type.
//!
//! One row per record, keyed by `(tenant_id, entity_type, id)`. Deleted records keep their
//! row with `deleted_at` set, so the API can answer 404 for them while admins may still list
//! them. Timestamps come from the events, so a rebuild reproduces the table row for row.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::entity::Entity;
use eventlog::sql::Texts;
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

    fn reads_metadata(&self) -> bool {
        false
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
        let mut created: Vec<NewRow<'_>> = Vec::new();
        for event in events.iter().filter(|e| e.aggregate_type == Entity::TYPE) {
            let change = Change::read(event)?;
            let version = event.sequence;
            let at = event.recorded_at;
            if let Change::Created(record) = change {
                created.push(NewRow {
                    tenant: &event.tenant_id,
                    record,
                    version,
                    at,
                });
                continue;
            }
            insert_created(tx, target, &mut created).await?;
            match change {
                Change::Created(_) => unreachable!("inserted above"),
                Change::Written(record) => {
                    tx.execute(
                        Statement::new(&update)
                            .bind(event.tenant_id.as_str())
                            .bind(record.entity_type)
                            .bind(record.id)
                            .bind(Json(record.data))
                            .bind(version)
                            .bind(at),
                    )
                    .await?;
                }
                Change::Deleted(record) => {
                    tx.execute(
                        Statement::new(&delete)
                            .bind(event.tenant_id.as_str())
                            .bind(record.entity_type)
                            .bind(record.id)
                            .bind(at)
                            .bind(version),
                    )
                    .await?;
                }
            }
        }
        insert_created(tx, target, &mut created).await?;
        Ok(())
    }
}

/// What an `Entity` event does to its record's row, read in place from the event's payload:
/// the document is written as the log holds it, without decoding it into a copy first.
enum Change<'a> {
    Created(Fields<'a>),
    /// Updated or replaced: the whole document after the change.
    Written(Fields<'a>),
    Deleted(Names<'a>),
}

/// A record's names and its document (`data`), as an event that writes one holds them.
#[derive(Debug, PartialEq)]
struct Fields<'a> {
    entity_type: &'a str,
    id: &'a str,
    data: &'a serde_json::Map<String, Value>,
}

/// The names every `Entity` event's payload holds ([`domain::entity::EntityEvent`]
/// serialized), borrowed.
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Names<'a> {
    entity_type: &'a str,
    id: &'a str,
}

impl<'a> Change<'a> {
    fn read(event: &'a RecordedEvent) -> Result<Self, ProjectionError> {
        use serde::Deserialize;
        use serde::de::Error as _;
        let failed = |source| ProjectionError::Decode {
            event_id: event.event_id,
            source,
        };
        let names = Names::deserialize(&*event.payload).map_err(failed)?;
        let data = || match event.payload.get("data") {
            Some(Value::Object(data)) => Ok(data),
            Some(_) => Err(failed(serde_json::Error::custom("'data' is not an object"))),
            None => Err(failed(serde_json::Error::missing_field("data"))),
        };
        let fields = |data| Fields {
            entity_type: names.entity_type,
            id: names.id,
            data,
        };
        Ok(match event.event_type.as_str() {
            "EntityCreated" => Change::Created(fields(data()?)),
            "EntityUpdated" | "EntityReplaced" => Change::Written(fields(data()?)),
            "EntityDeleted" => Change::Deleted(names),
            other => {
                return Err(failed(serde_json::Error::unknown_variant(
                    other,
                    &[
                        "EntityCreated",
                        "EntityUpdated",
                        "EntityReplaced",
                        "EntityDeleted",
                    ],
                )));
            }
        })
    }
}

/// A record as its creation left it.
struct NewRow<'a> {
    tenant: &'a str,
    record: Fields<'a>,
    version: i64,
    at: DateTime<Utc>,
}

/// Most records in one insert (seven bound values each).
const INSERT_CHUNK: usize = 500;

/// Inserts (and empties) `rows`, in statements of up to [`INSERT_CHUNK`] rows; a record
/// already in the table is left as it is.
async fn insert_created(
    tx: &mut Tx,
    target: Target,
    rows: &mut Vec<NewRow<'_>>,
) -> Result<(), ProjectionError> {
    static INSERT: Texts = Texts::new(INSERT_CHUNK);
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = crate::rows_text(&INSERT, tx, target, chunk.len(), || {
            format!(
                "INSERT INTO {} (tenant_id, entity_type, id, data, version, created_at, \
                 updated_at) VALUES {} ON CONFLICT (tenant_id, entity_type, id) DO NOTHING",
                target.table("entities"),
                tx.backend().values(chunk.len(), 7)
            )
        });
        // Full chunks (rebuilds, catch-up) share one prepared statement; the sizes of
        // live batches vary too much to keep one per size.
        let mut query =
            Statement::new(&sql).persistent(eventlog::sql::recurs(chunk.len(), INSERT_CHUNK));
        for row in chunk {
            query = query
                .bind(row.tenant)
                .bind(row.record.entity_type)
                .bind(row.record.id)
                .bind(Json(row.record.data))
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

#[cfg(test)]
mod tests {
    use super::*;
    use domain::entity::EntityEvent;
    use domain::names::{EntityId, EntityTypeName};
    use eventlog::{Cursor, NewEvent};

    /// The event as the log records it: the payload [`NewEvent::from_domain`] stores.
    fn recorded(event: &EntityEvent) -> RecordedEvent {
        let new = NewEvent::from_domain(event).unwrap();
        RecordedEvent {
            cursor: Cursor::START,
            event_id: new.event_id,
            tenant_id: "acme".into(),
            aggregate_type: Entity::TYPE.into(),
            aggregate_id: "users/u1".into(),
            sequence: 1,
            event_type: new.event_type,
            event_version: new.event_version,
            payload: new.payload,
            metadata: Arc::new(Value::Null),
            recorded_at: Utc::now(),
        }
    }

    fn document() -> serde_json::Map<String, Value> {
        serde_json::json!({"name": "Ada", "tags": ["a", {"deep": [1, 2.5, null]}]})
            .as_object()
            .unwrap()
            .clone()
    }

    /// The in-place reading agrees with the domain event's own serialization, variant by
    /// variant: a renamed field would fail here, not in a projection.
    #[test]
    fn every_entity_event_reads_in_place_as_the_domain_writes_it() {
        let (entity_type, id) = (
            EntityTypeName::parse("users").unwrap(),
            EntityId::parse("u1").unwrap(),
        );
        let data = document();
        let expected = |data| Fields {
            entity_type: "users",
            id: "u1",
            data,
        };
        let created = recorded(&EntityEvent::EntityCreated {
            entity_type: entity_type.clone(),
            id: id.clone(),
            data: data.clone(),
        });
        assert!(matches!(Change::read(&created), Ok(Change::Created(f)) if f == expected(&data)));
        let updated = recorded(&EntityEvent::EntityUpdated {
            entity_type: entity_type.clone(),
            id: id.clone(),
            patch: serde_json::Map::new(),
            data: data.clone(),
        });
        assert!(matches!(Change::read(&updated), Ok(Change::Written(f)) if f == expected(&data)));
        let replaced = recorded(&EntityEvent::EntityReplaced {
            entity_type: entity_type.clone(),
            id: id.clone(),
            data: data.clone(),
        });
        assert!(matches!(Change::read(&replaced), Ok(Change::Written(f)) if f == expected(&data)));
        let deleted = recorded(&EntityEvent::EntityDeleted { entity_type, id });
        assert!(
            matches!(Change::read(&deleted), Ok(Change::Deleted(n)) if n == Names {
                entity_type: "users",
                id: "u1",
            })
        );
    }

    #[test]
    fn an_entity_event_without_its_fields_is_a_decode_error() {
        let mut event = recorded(&EntityEvent::EntityCreated {
            entity_type: EntityTypeName::parse("users").unwrap(),
            id: EntityId::parse("u1").unwrap(),
            data: document(),
        });
        event.payload =
            Arc::new(serde_json::json!({"entityType": "users", "id": "u1", "data": [1]}));
        assert!(matches!(
            Change::read(&event),
            Err(ProjectionError::Decode { .. })
        ));
        event.payload = Arc::new(serde_json::json!({"entityType": "users", "id": "u1"}));
        assert!(matches!(
            Change::read(&event),
            Err(ProjectionError::Decode { .. })
        ));
        event.payload = Arc::new(serde_json::json!({"id": "u1", "data": {}}));
        assert!(matches!(
            Change::read(&event),
            Err(ProjectionError::Decode { .. })
        ));
        event.event_type = "EntityRenamed".into();
        event.payload =
            Arc::new(serde_json::json!({"entityType": "users", "id": "u1", "data": {}}));
        assert!(matches!(
            Change::read(&event),
            Err(ProjectionError::Decode { .. })
        ));
    }
}
