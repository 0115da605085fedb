//! The `tenants` read model: one row per tenant with its name, status and rate limit.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::tenant::{Tenant, TenantEvent, TenantStatus};
use eventlog::{Db, RecordedEvent, Statement, Tx};

use crate::{ProjectionError, Projector, Target};

pub const NAME: &str = "tenants";

#[derive(Debug, Clone, Copy, Default)]
pub struct TenantsProjector;

#[async_trait]
impl Projector for TenantsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tenants"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Tenant::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("tenants");
        let insert = format!(
            "INSERT INTO {table} (tenant_id, name, status, rate_limit_per_minute, created_at, \
             updated_at) VALUES ($1, $2, 'active', $3, $4, $4) ON CONFLICT (tenant_id) DO NOTHING"
        );
        let set_name =
            format!("UPDATE {table} SET name = $2, updated_at = $3 WHERE tenant_id = $1");
        let set_status =
            format!("UPDATE {table} SET status = $2, updated_at = $3 WHERE tenant_id = $1");
        let set_limit = format!(
            "UPDATE {table} SET rate_limit_per_minute = $2, updated_at = $3 WHERE tenant_id = $1"
        );
        for event in events.iter().filter(|e| e.aggregate_type == Tenant::TYPE) {
            let tenant = event.tenant_id.as_str();
            let at = event.recorded_at;
            let decoded: TenantEvent = crate::decode(event)?;
            let query = match &decoded {
                TenantEvent::TenantCreated {
                    name,
                    rate_limit_per_minute,
                    ..
                } => Statement::new(&insert)
                    .bind(tenant)
                    .bind(name.as_str())
                    .bind(rate_limit_per_minute.map(i64::from))
                    .bind(at),
                TenantEvent::TenantRenamed { name, .. } => Statement::new(&set_name)
                    .bind(tenant)
                    .bind(name.as_str())
                    .bind(at),
                TenantEvent::TenantSuspended { .. } => Statement::new(&set_status)
                    .bind(tenant)
                    .bind(TenantStatus::Suspended.as_str())
                    .bind(at),
                TenantEvent::TenantReactivated { .. } => Statement::new(&set_status)
                    .bind(tenant)
                    .bind(TenantStatus::Active.as_str())
                    .bind(at),
                TenantEvent::TenantRateLimitChanged {
                    rate_limit_per_minute,
                    ..
                } => Statement::new(&set_limit)
                    .bind(tenant)
                    .bind(rate_limit_per_minute.map(i64::from))
                    .bind(at),
            };
            tx.execute(query).await?;
        }
        Ok(())
    }
}

/// One tenant as the read model holds it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TenantRecord {
    #[sqlx(rename = "tenant_id")]
    pub id: String,
    pub name: String,
    pub status: String,
    pub rate_limit_per_minute: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "tenant_id, name, status, rate_limit_per_minute, created_at, updated_at";

pub async fn get(db: &Db, tenant_id: &str) -> Result<Option<TenantRecord>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM tenants WHERE tenant_id = $1");
    db.fetch_optional_as::<TenantRecord>(Statement::new(&sql).bind(tenant_id))
        .await
}

/// A page of tenants ordered by id, after `after`.
pub async fn list(
    db: &Db,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<TenantRecord>, sqlx::Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM tenants WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2");
    db.fetch_all_as::<TenantRecord>(
        Statement::new(&sql)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit)),
    )
    .await
}
