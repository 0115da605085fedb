//! Creating tenants and keys: shared by the HTTP routes and the `gateway tenants|keys`
//! commands, so both go through the same aggregates and the same log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::api_key::{ApiKey, ApiKeyCommand, ApiKeyError, ApiKeyServices, PLATFORM_TENANT};
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use domain::roles::Role;
use domain::tenant::{Tenant, TenantCommand, TenantError};
use eventlog::command::decide_new;
use eventlog::idempotency::{IdempotencyKey, StoredResponse};
use eventlog::{
    AppendError, Appended, CommandError, CommandOutcome, EventLog, StreamAppend, StreamId,
};
use projections::Projector;
use workers::runner::{self, BatchOutcome};

use crate::keys::{self, GeneratedKey};

/// The id of the platform key generated on the first start of an embedded gateway.
pub const BOOTSTRAP_PLATFORM_KEY_ID: &str = "key_platformbootstrap000";

/// Why a tenant could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error(transparent)]
    Tenant(TenantError),
    #[error(transparent)]
    Key(ApiKeyError),
    #[error("a tenant with this id already exists")]
    AlreadyExists,
    #[error(transparent)]
    Append(AppendError),
    /// Deciding failed without a refusal (a stored event that does not read back).
    #[error("the tenant's commands could not be decided: {0}")]
    Undecided(String),
}

impl From<CommandError<TenantError>> for CreateTenantError {
    fn from(error: CommandError<TenantError>) -> Self {
        match error {
            CommandError::Rejected(error) => Self::Tenant(error),
            CommandError::Append(error) => Self::Append(error),
            CommandError::Database(error) => Self::Append(AppendError::Database(error)),
            other => Self::Undecided(other.to_string()),
        }
    }
}

/// A created tenant and its first admin key.
#[derive(Debug)]
pub struct CreatedTenant {
    pub appended: Appended,
    pub key: GeneratedKey,
    pub response: StoredResponse,
}

/// Creates tenant `id` and its first admin key in one transaction: both or neither.
/// `respond` renders the answer, stored for replay when `idempotency` is given.
#[allow(clippy::too_many_arguments)]
pub async fn create_tenant(
    log: &EventLog,
    clock: &ApiKeyServices,
    id: TenantId,
    name: String,
    rate_limit_per_minute: Option<u32>,
    metadata: &EventMetadata,
    idempotency: Option<&IdempotencyKey>,
    respond: impl FnOnce(&Appended, &GeneratedKey) -> StoredResponse,
) -> Result<CreatedTenant, CreateTenantError> {
    let tenant_events = decide_new::<Tenant>(
        TenantCommand::CreateTenant {
            id: id.clone(),
            name,
            rate_limit_per_minute,
        },
        &(),
    )
    .await?;
    let key = keys::generate(None);
    let key_events = decide_new::<ApiKey>(
        ApiKeyCommand::IssueApiKey {
            id: key.id.clone(),
            tenant_id: id.clone(),
            name: "first admin key".into(),
            roles: vec![Role::Admin],
            expires_at: None,
            secret_hash: key.secret_hash.clone(),
            certificate_subject: None,
        },
        clock,
    )
    .await
    .map_err(|error| match error {
        CommandError::Rejected(error) => CreateTenantError::Key(error),
        other => CreateTenantError::Undecided(other.to_string()),
    })?;
    let batch = [
        StreamAppend {
            stream: StreamId::new(id.clone(), Tenant::TYPE, id.as_str()),
            expected_version: 0,
            events: tenant_events,
            metadata: metadata.clone(),
        },
        StreamAppend {
            stream: StreamId::new(id.clone(), ApiKey::TYPE, key.id.as_str()),
            expected_version: 0,
            events: key_events,
            metadata: metadata.clone(),
        },
    ];
    match log
        .append_completing(&batch, idempotency, |appended| {
            Some(respond(appended, &key))
        })
        .await
    {
        Ok((appended, response)) => Ok(CreatedTenant {
            appended,
            key,
            response: response.expect("respond always renders"),
        }),
        Err(AppendError::Conflict { .. }) => Err(CreateTenantError::AlreadyExists),
        Err(error) => Err(CreateTenantError::Append(error)),
    }
}

/// Issues a key to `tenant`.
pub async fn issue_key(
    log: &EventLog,
    clock: &ApiKeyServices,
    tenant: &TenantId,
    name: String,
    roles: Vec<Role>,
    expires_at: Option<DateTime<Utc>>,
    metadata: &EventMetadata,
) -> Result<(GeneratedKey, CommandOutcome<ApiKey>), CommandError<ApiKeyError>> {
    let key = keys::generate(None);
    let outcome = log
        .execute::<ApiKey>(
            &StreamId::new(tenant.clone(), ApiKey::TYPE, key.id.as_str()),
            ApiKeyCommand::IssueApiKey {
                id: key.id.clone(),
                tenant_id: tenant.clone(),
                name,
                roles,
                expires_at,
                secret_hash: key.secret_hash.clone(),
                certificate_subject: None,
            },
            clock,
            metadata,
        )
        .await?;
    Ok((key, outcome))
}

/// Revokes key `key_id` of `tenant`. Revoking a revoked key changes nothing.
pub async fn revoke_key(
    log: &EventLog,
    clock: &ApiKeyServices,
    tenant: &TenantId,
    key_id: &str,
    metadata: &EventMetadata,
) -> Result<CommandOutcome<ApiKey>, CommandError<ApiKeyError>> {
    log.execute::<ApiKey>(
        &StreamId::new(tenant.clone(), ApiKey::TYPE, key_id),
        ApiKeyCommand::RevokeApiKey,
        clock,
        metadata,
    )
    .await
}

/// Issues a new platform key (role `superadmin`) and revokes every other platform key that is
/// not revoked yet. Returns the new key and the ids revoked. (`GATEWAY_ADMIN_KEY` is not a
/// key of the log: it changes with the setting.)
pub async fn rotate_platform_key(
    log: &EventLog,
    clock: &ApiKeyServices,
    name: String,
) -> anyhow::Result<(GeneratedKey, Vec<String>, eventlog::Cursor)> {
    let platform = TenantId::parse(PLATFORM_TENANT).expect("a valid tenant id");
    let issue = EventMetadata::new(platform.clone(), "cli", "cli", "IssueApiKey");
    let (key, outcome) = issue_key(
        log,
        clock,
        &platform,
        name,
        vec![Role::Superadmin],
        None,
        &issue,
    )
    .await
    .map_err(|e| anyhow::anyhow!("issuing the new platform key: {e}"))?;
    let mut until = outcome.cursor.unwrap_or_default();
    catch_up(log, &projections::all(), until).await?;
    let mut revoked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page =
            projections::api_keys::list(log.db(), PLATFORM_TENANT, after.as_deref(), 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for old in page
            .iter()
            .filter(|k| k.id != key.id && k.revoked_at.is_none())
        {
            let metadata = EventMetadata::new(platform.clone(), "cli", "cli", "RevokeApiKey");
            let outcome = revoke_key(log, clock, &platform, &old.id, &metadata)
                .await
                .map_err(|e| anyhow::anyhow!("revoking platform key {}: {e}", old.id))?;
            until = outcome.cursor.unwrap_or(until);
            revoked.push(old.id.clone());
        }
    }
    Ok((key, revoked, until))
}

/// On the first start of an embedded gateway without `GATEWAY_ADMIN_KEY`, issues a platform
/// key and returns its token (to print once). Later starts, and other processes racing on the
/// first start, return `None`.
pub async fn ensure_platform_key(
    log: &EventLog,
    clock: &ApiKeyServices,
) -> anyhow::Result<Option<String>> {
    let platform = TenantId::parse(PLATFORM_TENANT).expect("a valid tenant id");
    let stream = StreamId::new(platform.clone(), ApiKey::TYPE, BOOTSTRAP_PLATFORM_KEY_ID);
    if log.version(&stream).await? > 0 {
        return Ok(None);
    }
    let key = keys::generate(Some(BOOTSTRAP_PLATFORM_KEY_ID.to_string()));
    let metadata = EventMetadata::new(platform.clone(), "system", "bootstrap", "IssueApiKey");
    let result = log
        .execute::<ApiKey>(
            &stream,
            ApiKeyCommand::IssueApiKey {
                id: key.id.clone(),
                tenant_id: platform,
                name: "bootstrap platform key".into(),
                roles: vec![Role::Superadmin],
                expires_at: None,
                secret_hash: key.secret_hash.clone(),
                certificate_subject: None,
            },
            clock,
            &metadata,
        )
        .await;
    match result {
        Ok(_) => Ok(Some(key.token)),
        Err(CommandError::Rejected(ApiKeyError::AlreadyIssued)) => Ok(None),
        Err(error) => Err(anyhow::anyhow!("issuing the platform key: {error}")),
    }
}

/// Applies the log to `projectors` until each has passed `until` (the cursor of events just
/// written), so that keys created from the command line work at once, whether or not a
/// gateway is running. Gives up after 30 seconds.
pub async fn catch_up(
    log: &EventLog,
    projectors: &[Arc<dyn Projector>],
    until: eventlog::Cursor,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    for projector in projectors {
        projections::checkpoints::ensure(log.db(), projector.name()).await?;
        loop {
            let checkpoint = projections::checkpoints::read(log.db(), projector.name())
                .await?
                .unwrap_or_default();
            if checkpoint >= until {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "projector {} did not catch up within 30 s",
                    projector.name()
                );
            }
            match runner::run_batch(
                log,
                projector.as_ref(),
                projections::Target::Live,
                projector.name(),
                500,
            )
            .await?
            {
                BatchOutcome::Applied { .. } => {}
                // Not visible yet (an older transaction is still open), or another process
                // is applying it right now.
                BatchOutcome::Idle | BatchOutcome::Busy => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
            }
        }
    }
    Ok(())
}
