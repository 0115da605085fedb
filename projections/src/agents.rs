//! The `agents` read model: every agent's current configuration and status.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::agent::{Agent, AgentConfig, AgentEvent, AgentStatus};
use eventlog::{Db, RecordedEvent, Statement, Tx};
use sqlx::types::Json;

use crate::{ProjectionError, Projector, Target};

pub const NAME: &str = "agents";

#[derive(Debug, Clone, Copy, Default)]
pub struct AgentsProjector;

#[async_trait]
impl Projector for AgentsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["agents"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Agent::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("agents");
        let insert = format!(
            "INSERT INTO {table} (tenant_id, id, name, config, status, version, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, 'active', $5, $6, $6) \
             ON CONFLICT (tenant_id, id) DO NOTHING"
        );
        let update = format!(
            "UPDATE {table} SET name = $3, config = $4, version = $5, updated_at = $6 \
             WHERE tenant_id = $1 AND id = $2 AND version < $5"
        );
        let archive = format!(
            "UPDATE {table} SET status = $3, version = $4, updated_at = $5 \
             WHERE tenant_id = $1 AND id = $2 AND version < $4"
        );
        for event in events.iter().filter(|e| e.aggregate_type == Agent::TYPE) {
            let tenant = event.tenant_id.as_str();
            let (version, at) = (event.sequence, event.recorded_at);
            let decoded: AgentEvent = crate::decode(event)?;
            let query = match &decoded {
                AgentEvent::AgentCreated { id, config } => Statement::new(&insert)
                    .bind(tenant)
                    .bind(id.as_str())
                    .bind(config.name.as_str())
                    .bind(Json(config))
                    .bind(version)
                    .bind(at),
                AgentEvent::AgentUpdated { id, config } => Statement::new(&update)
                    .bind(tenant)
                    .bind(id.as_str())
                    .bind(config.name.as_str())
                    .bind(Json(config))
                    .bind(version)
                    .bind(at),
                AgentEvent::AgentArchived { id } => Statement::new(&archive)
                    .bind(tenant)
                    .bind(id.as_str())
                    .bind(AgentStatus::Archived.as_str())
                    .bind(version)
                    .bind(at),
            };
            tx.execute(query).await?;
        }
        Ok(())
    }
}

/// One agent as the read model holds it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AgentRecord {
    pub id: String,
    #[sqlx(json)]
    pub config: AgentConfig,
    pub status: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, config, status, version, created_at, updated_at";

pub async fn get(db: &Db, tenant_id: &str, id: &str) -> Result<Option<AgentRecord>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM agents WHERE tenant_id = $1 AND id = $2");
    db.fetch_optional_as::<AgentRecord>(Statement::new(&sql).bind(tenant_id).bind(id))
        .await
}

/// A page of the tenant's agents ordered by id (creation order), after `after`; archived
/// agents only when `include_archived`.
pub async fn list(
    db: &Db,
    tenant_id: &str,
    after: Option<&str>,
    limit: u32,
    include_archived: bool,
) -> Result<Vec<AgentRecord>, sqlx::Error> {
    let archived = if include_archived {
        ""
    } else {
        "AND status = 'active'"
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM agents WHERE tenant_id = $1 AND id > $2 {archived} \
         ORDER BY id LIMIT $3"
    );
    db.fetch_all_as::<AgentRecord>(
        Statement::new(&sql)
            .bind(tenant_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit)),
    )
    .await
}

/// The names of the tenant's agents among `ids`, in one query.
pub async fn names(
    db: &Db,
    tenant_id: &str,
    ids: &[String],
) -> Result<std::collections::BTreeMap<String, String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT id, name FROM agents WHERE tenant_id = $1 AND id IN ({})",
        placeholders.join(", ")
    );
    let mut query = Statement::new(&sql).bind(tenant_id);
    for id in ids {
        query = query.bind(id.as_str());
    }
    let rows: Vec<(String, String)> = db.fetch_all_as(query).await?;
    Ok(rows.into_iter().collect())
}
