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
        /// A catalogue of entity types to define for the tenant in the same run: `panorama`
        /// (seed 000's users, conversations, messages and agent-shared-states).
        #[arg(long, value_name = "CATALOGUE")]
        entity_types: Option<String>,
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
            entity_types,
        } => {
            // An unknown catalogue is refused before anything is written.
            let catalogue = entity_types
                .as_deref()
                .map(app::catalogue::built_in)
                .transpose()
                .map_err(|error| match error {
                    app::Error::Validation(fields) => anyhow::anyhow!(
                        "--entity-types: {}",
                        fields
                            .iter()
                            .map(|f| f.message.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    other => other.into(),
                })?;
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
            let mut until = created.appended.last_cursor().unwrap_or_default();
            let mut imported = Vec::new();
            if let Some(types) = &catalogue {
                let metadata =
                    EventMetadata::new(id.clone(), "cli", "cli", app::catalogue::IMPORT_COMMAND);
                let (import, _) = app::catalogue::import(&log, &id, &metadata, types, None, |_| {
                    eventlog::idempotency::StoredResponse {
                        status: 200,
                        headers: Vec::new(),
                        body: Vec::new(),
                    }
                })
                .await?;
                until = import.cursor.unwrap_or(until).max(until);
                imported = import.types;
            }
            bootstrap::catch_up(&log, &projections::all(), until).await?;
            let mut answer = serde_json::json!({
                "tenant": { "id": id.as_str(), "name": created.appended.events[0].payload["name"] },
                "apiKey": { "id": created.key.id, "roles": ["admin"], "key": created.key.token },
            });
            if catalogue.is_some() {
                answer["entityTypes"] = serde_json::to_value(&imported)?;
            }
            writeln!(out, "{answer}")?;
            Ok(())
        }
    }
}
