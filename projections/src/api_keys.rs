//! The `api_keys` read model, and the credential lookup every authenticated request makes.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::api_key::{ApiKey, ApiKeyEvent};
use domain::roles::Role;
use eventlog::{Db, RecordedEvent, Statement, Tx};

use crate::{ProjectionError, Projector, Target};

pub const NAME: &str = "api_keys";

#[derive(Debug, Clone, Copy, Default)]
pub struct ApiKeysProjector;

fn roles_text(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_roles(text: &str) -> Vec<Role> {
    text.split(',').filter_map(|r| r.parse().ok()).collect()
}

#[async_trait]
impl Projector for ApiKeysProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["api_keys"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[ApiKey::TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        target: Target,
        events: &[Arc<RecordedEvent>],
    ) -> Result<(), ProjectionError> {
        let table = target.table("api_keys");
        let insert = format!(
            "INSERT INTO {table} (key_id, tenant_id, name, roles, secret_hash, expires_at, \
             created_at, certificate_subject) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (key_id) DO NOTHING"
        );
        let revoke = format!(
            "UPDATE {table} SET revoked_at = $3 WHERE key_id = $1 AND tenant_id = $2 \
             AND revoked_at IS NULL"
        );
        for event in events.iter().filter(|e| e.aggregate_type == ApiKey::TYPE) {
            let at = event.recorded_at;
            let decoded: ApiKeyEvent = crate::decode(event)?;
            match &decoded {
                ApiKeyEvent::ApiKeyIssued {
                    id,
                    tenant_id,
                    name,
                    roles,
                    expires_at,
                    secret_hash,
                    certificate_subject,
                } => {
                    tx.execute(
                        Statement::new(&insert)
                            .bind(id.as_str())
                            .bind(tenant_id.as_str())
                            .bind(name.as_str())
                            .bind(roles_text(roles))
                            .bind(secret_hash.as_str())
                            .bind(*expires_at)
                            .bind(at)
                            .bind(certificate_subject.as_deref()),
                    )
                    .await?;
                }
                ApiKeyEvent::ApiKeyRevoked { id } => {
                    tx.execute(
                        Statement::new(&revoke)
                            .bind(id.as_str())
                            .bind(event.tenant_id.as_str())
                            .bind(at),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// What authentication needs to know about a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub key_id: String,
    pub tenant_id: String,
    pub roles: Vec<Role>,
    pub secret_hash: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    /// The tenant's status and rate limit, read in the same query; `None` when the tenant is
    /// not in the read model.
    pub tenant: Option<(String, Option<i64>)>,
}

/// The columns of a credential, with its tenant's status and rate limit.
const CREDENTIAL_SQL: &str = "SELECT k.key_id, k.tenant_id, k.roles, k.secret_hash, k.expires_at, \
     k.revoked_at, t.status AS tenant_status, t.rate_limit_per_minute \
     FROM api_keys k LEFT JOIN tenants t ON t.tenant_id = k.tenant_id";

fn credential_of(row: &eventlog::Row) -> Result<Credential, sqlx::Error> {
    let roles: String = row.try_get("roles")?;
    let revoked_at: Option<DateTime<Utc>> = row.try_get("revoked_at")?;
    Ok(Credential {
        key_id: row.try_get("key_id")?,
        tenant_id: row.try_get("tenant_id")?,
        roles: parse_roles(&roles),
        secret_hash: row.try_get("secret_hash")?,
        expires_at: row.try_get("expires_at")?,
        revoked: revoked_at.is_some(),
        tenant: row
            .try_get::<Option<String>, _>("tenant_status")?
            .map(|status| Ok::<_, sqlx::Error>((status, row.try_get("rate_limit_per_minute")?)))
            .transpose()?,
    })
}

/// The key `key_id`, whatever its tenant.
pub async fn credential(db: &Db, key_id: &str) -> Result<Option<Credential>, sqlx::Error> {
    // One round trip for what every request with an API key needs: the key and its tenant.
    let sql = format!("{CREDENTIAL_SQL} WHERE k.key_id = $1");
    db.fetch_optional(Statement::new(&sql).bind(key_id))
        .await?
        .as_ref()
        .map(credential_of)
        .transpose()
}

/// The keys registered for a client certificate with any of `subjects` (its common name and
/// the names it carries), whatever their tenant, revoked ones included.
pub async fn certificate_credentials(
    db: &Db,
    subjects: &[String],
) -> Result<Vec<Credential>, sqlx::Error> {
    if subjects.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=subjects.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "{CREDENTIAL_SQL} WHERE k.certificate_subject IN ({}) ORDER BY k.key_id",
        placeholders.join(", ")
    );
    let mut statement = Statement::new(&sql);
    for subject in subjects {
        statement.push(subject.as_str());
    }
    db.fetch_all(statement)
        .await?
        .iter()
        .map(credential_of)
        .collect()
}

/// A key as `GET /v1/api-keys` shows it (never the secret or its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub roles: Vec<Role>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// For a client certificate's key: the name it answers to.
    pub certificate_subject: Option<String>,
}

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for ApiKeyRecord
where
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        let roles: String = row.try_get("roles")?;
        Ok(Self {
            id: row.try_get("key_id")?,
            name: row.try_get("name")?,
            roles: parse_roles(&roles),
            expires_at: row.try_get("expires_at")?,
            created_at: row.try_get("created_at")?,
            revoked_at: row.try_get("revoked_at")?,
            last_used_at: row.try_get("last_used_at")?,
            certificate_subject: row.try_get("certificate_subject")?,
        })
    }
}

const SELECT: &str = "SELECT k.key_id, k.name, k.roles, k.expires_at, k.created_at, \
                      k.revoked_at, u.last_used_at, k.certificate_subject FROM api_keys k \
                      LEFT JOIN api_key_last_used u ON u.key_id = k.key_id";

/// The tenant's keys ordered by id, after `after`.
pub async fn list(
    db: &Db,
    tenant_id: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<ApiKeyRecord>, sqlx::Error> {
    let sql =
        format!("{SELECT} WHERE k.tenant_id = $1 AND k.key_id > $2 ORDER BY k.key_id LIMIT $3");
    db.fetch_all_as::<ApiKeyRecord>(
        Statement::new(&sql)
            .bind(tenant_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit)),
    )
    .await
}

/// One of the tenant's keys.
pub async fn get(
    db: &Db,
    tenant_id: &str,
    key_id: &str,
) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
    let sql = format!("{SELECT} WHERE k.tenant_id = $1 AND k.key_id = $2");
    db.fetch_optional_as::<ApiKeyRecord>(Statement::new(&sql).bind(tenant_id).bind(key_id))
        .await
}

/// Records when keys were last used (many at once; later times win).
pub async fn record_last_used(
    db: &Db,
    uses: &[(String, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    if uses.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for (key_id, at) in uses {
        tx.execute(
            Statement::new(
                "INSERT INTO api_key_last_used (key_id, last_used_at) VALUES ($1, $2) \
             ON CONFLICT (key_id) DO UPDATE SET last_used_at = excluded.last_used_at \
             WHERE api_key_last_used.last_used_at < excluded.last_used_at",
            )
            .bind(key_id.as_str())
            .bind(*at),
        )
        .await?;
    }
    tx.commit().await
}
