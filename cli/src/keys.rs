//! `gateway keys`: issue, revoke and rotate API keys.

use std::io::Write;
use std::sync::Arc;

use anyhow::bail;
use app::settings::Settings;
use app::{SystemClock, bootstrap};
use domain::api_key::{ApiKeyServices, PLATFORM_TENANT};
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use domain::roles::Role;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Issue a key to a tenant (`platform` with `--roles superadmin` for a platform key);
    /// prints JSON with the key, shown only here.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated roles: admin, writer, reader, analyst (or superadmin).
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        #[arg(long, default_value = "cli")]
        name: String,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Revoke a key (`--tenant platform` for a platform key); it stops working at once on
    /// this database and within GATEWAY_CREDENTIAL_CACHE_MS on running gateways.
    Revoke {
        #[arg(long)]
        tenant: String,
        /// The key's id (`key_…`, the part of the key before its last `_`).
        #[arg(long)]
        id: String,
    },
    /// Issue a new platform key (role `superadmin`) and revoke every other one, the key
    /// generated on first start included; prints the new key, shown only here.
    RotatePlatform {
        #[arg(long, default_value = "platform")]
        name: String,
    },
}

/// Runs `gateway keys …`.
pub async fn run(
    command: KeysCommand,
    settings: Settings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            tenant,
            roles,
            name,
            expires_at,
        } => {
            let log = app::open_log(&settings).await?;
            let clock: ApiKeyServices = Arc::new(SystemClock);
            let tenant = TenantId::parse(tenant)?;
            if tenant.as_str() != PLATFORM_TENANT {
                let stream = eventlog::StreamId::new(
                    tenant.clone(),
                    <domain::tenant::Tenant as cqrs_es::Aggregate>::TYPE,
                    tenant.as_str(),
                );
                if log.version(&stream).await? == 0 {
                    bail!("no tenant '{tenant}'");
                }
            }
            let roles = roles
                .iter()
                .map(|r| r.parse::<Role>())
                .collect::<Result<Vec<_>, _>>()?;
            let metadata = EventMetadata::new(tenant.clone(), "cli", "cli", "IssueApiKey");
            let (key, outcome) = bootstrap::issue_key(
                &log,
                &clock,
                &tenant,
                name,
                roles.clone(),
                expires_at,
                &metadata,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let until = outcome.cursor.unwrap_or_default();
            bootstrap::catch_up(&log, &projections::all(), until).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "tenant": tenant.as_str(),
                    "apiKey": { "id": key.id, "roles": roles, "key": key.token },
                })
            )?;
            Ok(())
        }
        KeysCommand::Revoke { tenant, id } => {
            let log = app::open_log(&settings).await?;
            let clock: ApiKeyServices = Arc::new(SystemClock);
            let tenant = TenantId::parse(tenant)?;
            let stream = eventlog::StreamId::new(
                tenant.clone(),
                <domain::api_key::ApiKey as cqrs_es::Aggregate>::TYPE,
                id.as_str(),
            );
            if log.version(&stream).await? == 0 {
                bail!("no key '{id}' in tenant '{tenant}'");
            }
            let metadata = EventMetadata::new(tenant.clone(), "cli", "cli", "RevokeApiKey");
            let outcome = bootstrap::revoke_key(&log, &clock, &tenant, &id, &metadata)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(until) = outcome.cursor {
                bootstrap::catch_up(&log, &projections::all(), until).await?;
            }
            writeln!(
                out,
                "{}",
                serde_json::json!({ "tenant": tenant.as_str(), "apiKey": { "id": id, "revoked": true } })
            )?;
            Ok(())
        }
        KeysCommand::RotatePlatform { name } => {
            let log = app::open_log(&settings).await?;
            let clock: ApiKeyServices = Arc::new(SystemClock);
            let (key, revoked, until) = bootstrap::rotate_platform_key(&log, &clock, name).await?;
            bootstrap::catch_up(&log, &projections::all(), until).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "apiKey": { "id": key.id, "roles": ["superadmin"], "key": key.token },
                    "revoked": revoked,
                })
            )?;
            Ok(())
        }
    }
}
