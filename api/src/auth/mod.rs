//! Authentication, authorization and rate limiting.
//!
//! Every route except the public ones (`/health`, `/ready`, `/openapi.json`,
//! `/asyncapi.json`, `/websocket.schema.json`, the console's page and assets, and `/metrics` unless
//! `GATEWAY_METRICS_PUBLIC=false`) needs
//! credentials (`/v1/ws` may take them in its first message instead); the [`authenticate`] middleware
//! turns them into a [`Principal`] or answers 401 `UNAUTHORIZED` without saying what was
//! wrong (the reason is logged). Handlers then declare the role they need with an extractor,
//! [`Auth<R>`] or [`crate::extract::CommandContext<R>`], whose `R` is one of the markers in
//! [`require`]; their OpenAPI entries list the same role.
//!
//! Credentials:
//! - `X-API-Key: gw_…`: a tenant's key (or a platform key, tenant `platform`), looked up by
//!   key id in the `api_keys` read model and checked against the stored SHA-256.
//! - `X-API-Key: <GATEWAY_ADMIN_KEY>`: the configured platform admin key (superadmin).
//! - `Authorization: Bearer <jwt>`: an HS256 service token (`JWT_SECRET`), see [`jwt`]. Its
//!   tenant comes from `x-tenant-id` or the `tenant` claim; both present and different: 403
//!   `TENANT_MISMATCH`.
//!
//! A suspended tenant's credentials get 403 `TENANT_SUSPENDED`.

pub mod jwt;

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::api_key::PLATFORM_TENANT;
use domain::names::TenantId;
use domain::roles::Role;
use domain::tenant::TenantStatus;
use eventlog::Cursor;
use secrecy::ExposeSecret;

use app::Error as AppError;

use crate::error::ApiError;
use crate::headers::{MIN_POSITION_HEADER, TENANT_HEADER};
use crate::state::AppState;

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The tenant the call acts for; `None` for platform credentials.
    pub tenant: Option<TenantId>,
    /// The API key id, `jwt:<service>`, or `admin-key`.
    pub subject: String,
    pub roles: Vec<Role>,
    pub kind: PrincipalKind,
    /// The request budget per minute that applies.
    pub rate_limit_per_minute: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    ApiKey,
    Jwt,
    AdminKey,
    /// A client certificate registered as a key (`certificateSubject`).
    Certificate,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::ApiKey => "apiKey",
            PrincipalKind::Jwt => "jwt",
            PrincipalKind::AdminKey => "adminKey",
            PrincipalKind::Certificate => "certificate",
        }
    }
}

/// Why authentication failed. Only the variant's status reaches the client.
#[derive(Debug)]
enum Denied {
    /// 401; the reason is logged.
    Unauthorized(&'static str),
    Suspended,
    Mismatch,
    UnknownTenant,
    InvalidTenant(String),
    /// 429: this client address looked up too many unknown keys this minute.
    TooManyUnknownKeys {
        retry_after: u64,
    },
    Database(sqlx::Error),
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthorized(reason) => {
                tracing::info!(reason, "authentication failed");
                ApiError::Unauthorized
            }
            Denied::Suspended => ApiError::TenantSuspended,
            Denied::Mismatch => ApiError::TenantMismatch,
            Denied::UnknownTenant => ApiError::TenantUnknown,
            Denied::InvalidTenant(reason) => AppError::InvalidTenant(reason).into(),
            Denied::TooManyUnknownKeys { retry_after } => {
                tracing::warn!("unknown API keys from one address over their budget");
                ApiError::RateLimited { retry_after }
            }
            Denied::Database(error) => error.into(),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What a request asks of the credential read models: the `x-min-position` it sends (its
/// credentials must reflect that write), and the address it comes from.
#[derive(Debug, Clone, Copy, Default)]
struct Asking {
    min_position: Option<Cursor>,
    peer: Option<IpAddr>,
}

/// Waits, at most `GATEWAY_CONSISTENCY_WAIT_MS`, until the read models credentials are read
/// from (keys and tenants) have applied `target`.
async fn credentials_reach(state: &AppState, target: Cursor) -> Result<(), Denied> {
    for name in [projections::api_keys::NAME, projections::tenants::NAME] {
        projections::progress::wait_until(
            &state.log,
            &state.progress,
            name,
            target,
            state.settings.consistency_wait(),
        )
        .await
        .map_err(Denied::Database)?;
    }
    Ok(())
}

/// Reads something a credential needs; when it is not there, waits for the credential read
/// models to apply everything committed so far and reads again, so that a key or tenant
/// created a moment ago (whose creation's answer the client already has) is found.
async fn read_fresh<T, F, Fut>(state: &AppState, read: F) -> Result<Option<T>, Denied>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, sqlx::Error>>,
{
    if let Some(found) = read().await.map_err(Denied::Database)? {
        return Ok(Some(found));
    }
    let committed = state.log.last_committed().await.map_err(Denied::Database)?;
    credentials_reach(state, committed).await?;
    read().await.map_err(Denied::Database)
}

/// The tenant's status and rate limit, or why it cannot act.
async fn tenant_budget(state: &AppState, tenant: &str) -> Result<u32, Denied> {
    let record = read_fresh(state, || projections::tenants::get(state.log.db(), tenant))
        .await?
        .ok_or(Denied::UnknownTenant)?;
    if record.status == TenantStatus::Suspended.as_str() {
        return Err(Denied::Suspended);
    }
    Ok(record
        .rate_limit_per_minute
        .map_or(state.settings.rate_limit_per_minute, |limit| limit as u32))
}

async fn from_api_key(
    state: &AppState,
    headers: &HeaderMap,
    token: &str,
    asking: Asking,
) -> Result<Principal, Denied> {
    if let Some(admin) = &state.settings.admin_key
        && app::keys::constant_time_eq(token, admin.expose_secret())
    {
        return Ok(Principal {
            tenant: None,
            subject: "admin-key".into(),
            roles: vec![Role::Superadmin],
            kind: PrincipalKind::AdminKey,
            rate_limit_per_minute: state.settings.rate_limit_per_minute,
        });
    }
    let (key_id, secret) = app::keys::parse(token).ok_or(Denied::Unauthorized("malformed key"))?;
    // A request that names the position of a write (a key issued, revoked or changed, a
    // tenant suspended) is authenticated on read models that have it, not on the cache.
    if let Some(position) = asking.min_position {
        credentials_reach(state, position).await?;
    }
    let cached = match asking.min_position {
        Some(_) => None,
        None => state.credentials.get(key_id),
    };
    let credential = match cached {
        Some(credential) => credential,
        None => {
            let limit = state.settings.unknown_key_lookups_per_minute;
            let peer = asking.peer.map(|ip| ip.to_string());
            if let Some(peer) = &peer
                && let Some(retry_after) = state.unknown_keys.exhausted(peer, limit)
            {
                return Err(Denied::TooManyUnknownKeys { retry_after });
            }
            let found = read_fresh(state, || {
                projections::api_keys::credential(state.log.db(), key_id)
            })
            .await?;
            let Some(credential) = found else {
                if let Some(peer) = &peer {
                    state.unknown_keys.check(peer, limit);
                }
                return Err(Denied::Unauthorized("unknown key"));
            };
            state.credentials.insert(credential)
        }
    };
    if !app::keys::constant_time_eq(&app::keys::hash_secret(secret), &credential.secret_hash) {
        return Err(Denied::Unauthorized("wrong secret"));
    }
    key_principal(state, headers, &credential, PrincipalKind::ApiKey)
}

/// Whether a key still authenticates: not revoked, not expired.
fn live(credential: &projections::api_keys::Credential) -> Result<(), Denied> {
    if credential.revoked {
        return Err(Denied::Unauthorized("revoked key"));
    }
    if credential.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(Denied::Unauthorized("expired key"));
    }
    Ok(())
}

/// The principal of a key (its secret or its certificate already checked): live, of a
/// tenant that is not suspended and that `x-tenant-id`, if sent, names.
fn key_principal(
    state: &AppState,
    headers: &HeaderMap,
    credential: &projections::api_keys::Credential,
    kind: PrincipalKind,
) -> Result<Principal, Denied> {
    live(credential)?;
    state.last_used.touch(&credential.key_id);
    let tenant = TenantId::parse(credential.tenant_id.clone())
        .map_err(|_| Denied::Unauthorized("key of a malformed tenant"))?;
    if let Some(named) = header(headers, TENANT_HEADER)
        && named != tenant.as_str()
    {
        return Err(Denied::Mismatch);
    }
    if tenant.as_str() == PLATFORM_TENANT {
        return Ok(Principal {
            tenant: None,
            subject: credential.key_id.clone(),
            roles: credential.roles.clone(),
            kind,
            rate_limit_per_minute: state.settings.rate_limit_per_minute,
        });
    }
    let (status, limit) = credential.tenant.as_ref().ok_or(Denied::UnknownTenant)?;
    if status == TenantStatus::Suspended.as_str() {
        return Err(Denied::Suspended);
    }
    let rate_limit_per_minute = limit.map_or(state.settings.rate_limit_per_minute, |l| l as u32);
    Ok(Principal {
        tenant: Some(tenant),
        subject: credential.key_id.clone(),
        roles: credential.roles.clone(),
        kind,
        rate_limit_per_minute,
    })
}

async fn from_jwt(
    state: &AppState,
    headers: &HeaderMap,
    token: &str,
    asking: Asking,
) -> Result<Principal, Denied> {
    if let Some(position) = asking.min_position {
        credentials_reach(state, position).await?;
    }
    let expect = jwt::Expectations {
        issuer: state.settings.jwt_issuer.clone(),
        audience: state.settings.jwt_audience.clone(),
    };
    let names = jwt::ClaimNames::new(
        &state.settings.jwt_tenant_claim,
        &state.settings.jwt_roles_claim,
        &state.settings.jwt_subject_claim,
    );
    let secret = state.settings.jwt_secret.as_ref();
    let claims = jwt::verify(
        token,
        secret.map(|s| s.expose_secret().as_bytes()),
        state.jwks.as_deref(),
        &expect,
        &names,
    )
    .await
    .map_err(|error| {
        tracing::info!(%error, "JWT refused");
        Denied::Unauthorized("invalid token")
    })?;
    let roles: Vec<Role> = claims.roles.iter().filter_map(|r| r.parse().ok()).collect();
    let subject = format!("jwt:{}", claims.subject);
    let tenant = match (header(headers, TENANT_HEADER), claims.tenant.as_deref()) {
        (Some(named), Some(claimed)) if named != claimed => return Err(Denied::Mismatch),
        (Some(tenant), _) | (None, Some(tenant)) => {
            Some(TenantId::parse(tenant).map_err(|e| Denied::InvalidTenant(e.to_string()))?)
        }
        (None, None) => None,
    };
    let rate_limit_per_minute = match &tenant {
        Some(tenant) => tenant_budget(state, tenant.as_str()).await?,
        None => state.settings.rate_limit_per_minute,
    };
    Ok(Principal {
        tenant,
        subject,
        roles,
        kind: PrincipalKind::Jwt,
        rate_limit_per_minute,
    })
}

/// The names a client certificate answers to: its subject's common names, and the DNS and
/// URI names of its subject alternative names.
pub fn certificate_names(certificate: &crate::server::PeerCertificate) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.0.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::URI(uri) => names.push(uri.to_string()),
                _ => {}
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// A client certificate (verified against `TLS_CLIENT_CA` in the handshake) registered as a
/// key: exactly one key of any tenant must name one of its names and hold.
async fn from_certificate(
    state: &AppState,
    headers: &HeaderMap,
    certificate: &crate::server::PeerCertificate,
    asking: Asking,
) -> Result<Principal, Denied> {
    let names = certificate_names(certificate);
    if let Some(position) = asking.min_position {
        credentials_reach(state, position).await?;
    }
    let found = read_fresh(state, || async {
        let found = projections::api_keys::certificate_credentials(state.log.db(), &names).await?;
        Ok((!found.is_empty()).then_some(found))
    })
    .await?
    .unwrap_or_default();
    let live: Vec<_> = found.into_iter().filter(|c| live(c).is_ok()).collect();
    match live.as_slice() {
        [one] => key_principal(state, headers, one, PrincipalKind::Certificate),
        [] => Err(Denied::Unauthorized("no live key for this certificate")),
        _ => Err(Denied::Unauthorized("several keys name this certificate")),
    }
}

async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    certificate: Option<&crate::server::PeerCertificate>,
    asking: Asking,
) -> Result<Principal, Denied> {
    if let Some(token) = header(headers, "x-api-key") {
        return from_api_key(state, headers, token.trim(), asking).await;
    }
    if let Some(value) = header(headers, "authorization") {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(Denied::Unauthorized("unsupported authorization scheme"))?;
        return from_jwt(state, headers, token.trim(), asking).await;
    }
    if let Some(certificate) = certificate {
        return from_certificate(state, headers, certificate, asking).await;
    }
    Err(Denied::Unauthorized("no credentials"))
}

/// Authenticates `headers` again for a connection that outlives its request (the live
/// stream): bypassing the credential cache, on read models that have every committed event,
/// and requiring `role` and the same tenant. The error says why the credentials no longer
/// hold (revoked, expired, suspended, role taken away).
pub async fn recheck(
    state: &AppState,
    headers: &HeaderMap,
    certificate: Option<&crate::server::PeerCertificate>,
    role: Role,
    tenant: &TenantId,
) -> Result<(), ApiError> {
    let committed = state.log.last_committed().await?;
    let asking = Asking {
        min_position: Some(committed),
        peer: None,
    };
    let principal = identify(state, headers, certificate, asking).await?;
    if !Role::any_grants(&principal.roles, role) {
        return Err(ApiError::Forbidden { required: role });
    }
    if principal.tenant.as_ref() != Some(tenant) {
        return Err(ApiError::TenantMismatch);
    }
    Ok(())
}

/// Authenticates credentials given after the request (the first message of a WebSocket
/// connection that a browser opened without headers), as the middleware would have.
pub async fn sign_in(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Principal, ApiError> {
    let asking = Asking {
        min_position: None,
        peer,
    };
    Ok(identify(state, headers, None, asking).await?)
}

/// The WebSocket route: it may be opened without credentials (browsers cannot send headers
/// with it) and then takes them in its first message; credentials in the headers are
/// checked here as on every route.
pub const WEBSOCKET_ROUTE: &str = "/v1/ws";

/// Routes anyone may call.
fn is_public(route: &str, metrics_public: bool) -> bool {
    matches!(
        route,
        "/health"
            | "/ready"
            | "/openapi.json"
            | "/asyncapi.json"
            | "/websocket.schema.json"
            | "/console"
            | "/console/{asset}"
    ) || (route == "/metrics" && metrics_public)
}

/// The authentication step of the gateway's middleware (`routes::gateway_middleware`):
/// authenticates, counts the request against the principal's budget, and adds the
/// `RateLimit-*` headers to the response.
pub async fn authenticate(state: &AppState, mut request: Request, next: Next) -> Response {
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
    else {
        return next.run(request).await;
    };
    if is_public(&route, state.settings.metrics_public) {
        return next.run(request).await;
    }
    if route == WEBSOCKET_ROUTE
        && header(request.headers(), "x-api-key").is_none()
        && header(request.headers(), "authorization").is_none()
        && request
            .extensions()
            .get::<crate::server::PeerCertificate>()
            .is_none()
    {
        return next.run(request).await;
    }
    let asking = Asking {
        // A malformed position is refused by the route's own extractor; here it asks nothing.
        min_position: header(request.headers(), MIN_POSITION_HEADER).and_then(|p| p.parse().ok()),
        peer: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip()),
    };
    let certificate = request
        .extensions()
        .get::<crate::server::PeerCertificate>()
        .cloned();
    let principal = match identify(state, request.headers(), certificate.as_ref(), asking).await {
        Ok(principal) => principal,
        Err(denied) => return ApiError::from(denied).into_response(),
    };
    if let Some(tenant) = &principal.tenant {
        tracing::Span::current().record("tenant", tenant.as_str());
    }
    let decision = state
        .rate_limiter
        .check(&principal.subject, principal.rate_limit_per_minute);
    let mut response = if decision.allowed {
        request.extensions_mut().insert(principal);
        next.run(request).await
    } else {
        ApiError::RateLimited {
            retry_after: decision.reset_seconds,
        }
        .into_response()
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", decision.limit as u64),
        ("ratelimit-remaining", decision.remaining as u64),
        ("ratelimit-reset", decision.reset_seconds),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    response
}

/// A role a route requires; implemented by the markers in [`require`].
pub trait RequiredRole: Send + Sync + 'static {
    const ROLE: Role;
}

/// Markers naming the role a route requires: `Auth<require::Reader>`.
pub mod require {
    use super::{RequiredRole, Role};

    macro_rules! markers {
        ($($name:ident),*) => {$(
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl RequiredRole for $name {
                const ROLE: Role = Role::$name;
            }
        )*};
    }
    markers!(Superadmin, Admin, Writer, Reader, Analyst);
}

/// The authenticated principal, holding role `R`. Tenant roles also need a tenant.
#[derive(Debug, Clone)]
pub struct Auth<R: RequiredRole> {
    pub principal: Principal,
    _role: PhantomData<R>,
}

impl<R: RequiredRole> Auth<R> {
    /// The tenant of a tenant-role principal (always present for those).
    pub fn tenant(&self) -> &TenantId {
        self.principal
            .tenant
            .as_ref()
            .expect("tenant roles are only granted with a tenant")
    }
}

impl<S: Send + Sync, R: RequiredRole> FromRequestParts<S> for Auth<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthorized)?;
        if !Role::any_grants(&principal.roles, R::ROLE) {
            return Err(ApiError::Forbidden { required: R::ROLE });
        }
        if R::ROLE != Role::Superadmin && principal.tenant.is_none() {
            return Err(ApiError::TenantRequired);
        }
        Ok(Self {
            principal,
            _role: PhantomData,
        })
    }
}

/// Any authenticated principal, whatever its roles (for `/v1/me`).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Authenticated)
            .ok_or(ApiError::Unauthorized)
    }
}
