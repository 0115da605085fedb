//! `gateway tenants`: create a tenant and its first admin key.

use std::io::Write;
use std::sync::Arc;

use app::settings::Settings;
use app::{SystemClock, bootstrap};
use domain::api_key::ApiKeyServices;
use domain::metadata::EventMetadata;
use domain::names::TenantId;

#[derive(Debug, clap::Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant and its first admin key; prints JSON with both.
    Create {
        #[arg(long)]
        name: String,
        /// The tenant id; generated (`tnt_…`) when absent.
        #[arg(long)]
        id: Option<String>,
        /// The tenant's request budget per key per minute.
        #[arg(long)]
        rate_limit_per_minute: Option<u32>,
    },
}

/// Runs `gateway tenants …`.
pub async fn run(
    command: TenantsCommand,
    settings: Settings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        TenantsCommand::Create {
            name,
            id,
            rate_limit_per_minute,
        } => {
            let log = app::open_log(&settings).await?;
            let clock: ApiKeyServices = Arc::new(SystemClock);
            let id = match id {
                Some(id) => TenantId::parse(id)?,
                None => TenantId::parse(format!("tnt_{}", uuid::Uuid::now_v7().simple()))?,
            };
            let metadata = EventMetadata::new(id.clone(), "cli", "cli", "CreateTenant");
            let created = bootstrap::create_tenant(
                &log,
                &clock,
                id.clone(),
                name,
                rate_limit_per_minute,
                &metadata,
                None,
                |_, _| eventlog::idempotency::StoredResponse {
                    status: 201,
                    headers: Vec::new(),
                    body: Vec::new(),
                },
            )
            .await?;
            let until = created.appended.last_cursor().unwrap_or_default();
            bootstrap::catch_up(&log, &projections::all(), until).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "tenant": { "id": id.as_str(), "name": created.appended.events[0].payload["name"] },
                    "apiKey": { "id": created.key.id, "roles": ["admin"], "key": created.key.token },
                })
            )?;
            Ok(())
        }
    }
}
