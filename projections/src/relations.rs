//! The `relations` read model: one row per edge of a relation between two records, from the
//! `Relation*` events of each record's `Links` stream, and the queries for a record's outgoing
//! and incoming edges, a page at a time in the other record's id order, each with the other
//! record as the `entities` read model holds it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::relation::{Edge, Links, LinksEvent};
use eventlog::json::DeepJson;
use eventlog::sql::Texts;
use eventlog::{Db, RecordedEvent, Statement, Tx};

use crate::{ProjectionError, Projector, Target};

/// Builds the `relations` table.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelationsProjector;

/// The projector's name.
pub const NAME: &str = "relations";

/// Most edges in one insert (seven bound values each).
const INSERT_CHUNK: usize = 500;

#[async_trait]
impl Projector for RelationsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["relations"]
    }

    fn reads_metadata(&self) -> bool {
        false
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Links::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("relations");
        let delete = format!(
            "DELETE FROM {table} WHERE tenant_id = $1 AND source_type = $2 AND source_id = $3 \
             AND relation = $4 AND target_id = $5"
        );
        // Links in a row are inserted together; an unlink first writes them out, so that
        // every edge's events apply in log order.
        let mut linked: Vec<(String, Edge, DateTime<Utc>)> = Vec::new();
        for event in events.iter().filter(|e| e.aggregate_type == Links::TYPE) {
            match crate::decode::<LinksEvent>(event)? {
                LinksEvent::RelationLinked { edge } => {
                    linked.push((event.tenant_id.clone(), edge, event.recorded_at));
                }
                LinksEvent::RelationUnlinked { edge } => {
                    insert_linked(tx, target, &mut linked).await?;
                    tx.execute(
                        Statement::new(&delete)
                            .bind(event.tenant_id.as_str())
                            .bind(edge.source_type.as_str())
                            .bind(edge.source_id.as_str())
                            .bind(edge.relation.as_str())
                            .bind(edge.target_id.as_str()),
                    )
                    .await?;
                }
                LinksEvent::RelationsClosed { .. } => {}
            }
        }
        insert_linked(tx, target, &mut linked).await?;
        Ok(())
    }
}

/// Inserts (and empties) `rows`; an edge already in the table keeps its row.
async fn insert_linked(
    tx: &mut Tx,
    target: Target,
    rows: &mut Vec<(String, Edge, DateTime<Utc>)>,
) -> Result<(), ProjectionError> {
    static INSERT: Texts = Texts::new(INSERT_CHUNK);
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = crate::rows_text(&INSERT, tx, target, chunk.len(), || {
            format!(
                "INSERT INTO {} (tenant_id, source_type, source_id, relation, target_type, \
                 target_id, created_at) VALUES {} \
                 ON CONFLICT (tenant_id, source_type, source_id, relation, target_id) DO NOTHING",
                target.table("relations"),
                tx.backend().values(chunk.len(), 7)
            )
        });
        let mut query =
            Statement::new(&sql).persistent(eventlog::sql::recurs(chunk.len(), INSERT_CHUNK));
        for (tenant, edge, at) in chunk {
            query = query
                .bind(tenant.as_str())
                .bind(edge.source_type.as_str())
                .bind(edge.source_id.as_str())
                .bind(edge.relation.as_str())
                .bind(edge.target_type.as_str())
                .bind(edge.target_id.as_str())
                .bind(*at);
        }
        tx.execute(query).await?;
    }
    rows.clear();
    Ok(())
}

/// Which edges of a record to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The edges of `relation` that start at the record.
    Outgoing,
    /// The edges of `relation` of records of `source_type` that point at the record.
    Incoming,
}

/// One edge as seen from a record: the record at its other end, and that record's state
/// in the `entities` read model (`None` when it is not there, or deleted).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Related {
    pub entity_type: String,
    pub id: String,
    pub linked_at: DateTime<Utc>,
    pub data: Option<DeepJson>,
    pub version: Option<i64>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// What a page of a record's edges asks for.
#[derive(Debug, Clone)]
pub struct EdgeQuery<'a> {
    pub tenant_id: &'a str,
    /// The record.
    pub entity_type: &'a str,
    pub id: &'a str,
    pub direction: Direction,
    /// The type the relation is declared on: the record's own type (outgoing) or the type
    /// of the records that point at it (incoming).
    pub source_type: &'a str,
    pub relation: &'a str,
    /// The id of the last record of the previous page.
    pub after: Option<&'a str>,
    pub limit: u32,
}

/// A page of a record's edges of one relation, in the other record's id order.
pub async fn edges(db: &Db, query: &EdgeQuery<'_>) -> Result<Vec<Related>, sqlx::Error> {
    // The record's end of the edge, and the other end.
    let (own, other) = match query.direction {
        Direction::Outgoing => ("source", "target"),
        Direction::Incoming => ("target", "source"),
    };
    let after = if query.after.is_some() {
        format!(" AND r.{other}_id > $6")
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT r.{other}_type AS entity_type, r.{other}_id AS id, r.created_at AS linked_at, \
         e.data, e.version, e.created_at, e.updated_at \
         FROM relations r LEFT JOIN entities e ON e.tenant_id = r.tenant_id \
         AND e.entity_type = r.{other}_type AND e.id = r.{other}_id AND e.deleted_at IS NULL \
         WHERE r.tenant_id = $1 AND r.{own}_type = $2 AND r.{own}_id = $3 \
         AND r.source_type = $4 AND r.relation = $5{after} \
         ORDER BY r.{other}_id LIMIT {}",
        query.limit
    );
    let mut statement = Statement::new(&sql)
        .bind(query.tenant_id)
        .bind(query.entity_type)
        .bind(query.id)
        .bind(query.source_type)
        .bind(query.relation);
    if let Some(after) = query.after {
        statement.push(after);
    }
    db.fetch_all_as::<Related>(statement).await
}
