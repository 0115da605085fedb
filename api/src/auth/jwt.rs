//! JSON Web Tokens, verified with `jsonwebtoken`: HS256 tokens signed with the shared
//! `JWT_SECRET`, and RS256, ES256 and EdDSA tokens of an identity provider, verified against
//! the keys it publishes (a JWKS at `JWT_JWKS_URL`, or found through `JWT_ISSUER`'s
//! `/.well-known/openid-configuration`).
//!
//! The algorithm is the key's, never the token's: an HS256 token is checked with the shared
//! secret only (a provider's public key is never an HMAC secret), any other token with the
//! provider key its `kid` names, whose own algorithm the token must state; `none` is not an
//! algorithm here. `exp` is required; `exp` and `nbf` get [`LEEWAY_SECONDS`]; `iss` and `aud`
//! are checked when configured. Keys are cached, fetched again every `GATEWAY_JWKS_REFRESH_MS`
//! and when a token names a `kid` the cache lacks (at most once per
//! `GATEWAY_JWKS_MIN_REFRESH_MS`), so a rotated key works at once and a retired one stops
//! working at the next refresh.
//!
//! Which claims hold the tenant, the roles and the principal is configured
//! (`JWT_TENANT_CLAIM`, `JWT_ROLES_CLAIM`, `JWT_SUBJECT_CLAIM`), to read Keycloak's
//! `realm_access.roles`, a space-separated `scope`, or a client-credentials token's `azp`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// The claims of the tokens `gateway token` signs (HS256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The calling service's name (seed 000); `sub` is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A string or an array of strings.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub aud: Value,
}

/// Signs `claims` with HS256 (for `gateway token` and tests).
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("claims serialize")
}

/// What a verified token says, read through the configured claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub subject: String,
    pub roles: Vec<String>,
    pub tenant: Option<String>,
}

/// Which claims say what.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub tenant: String,
    pub roles: Vec<String>,
    pub subject: Vec<String>,
}

impl ClaimNames {
    pub fn new(tenant: &str, roles: &str, subject: &str) -> Self {
        let list = |raw: &str| {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        Self {
            tenant: tenant.trim().to_string(),
            roles: list(roles),
            subject: list(subject),
        }
    }
}

/// What the verifier checks besides the signature.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Why a token was refused. Never shown to the client (it gets 401 UNAUTHORIZED), only logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("the token's algorithm is not its key's")]
    Algorithm,
    #[error("no key for this token: {0}")]
    NoKey(String),
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("no subject")]
    Subject,
    #[error("the signing keys could not be fetched: {0}")]
    Keys(String),
}

/// The value at a dotted `path` of `claims`.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    // A claim named with dots (Auth0's namespaced `https://x.y/tenant`) first, then a path.
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, segment| value.get(segment))
}

/// Reads the configured claims of verified `claims`.
pub fn read(claims: &Value, names: &ClaimNames) -> Result<Verified, JwtError> {
    let subject = names
        .subject
        .iter()
        .find_map(|name| claim(claims, name).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .ok_or(JwtError::Subject)?
        .to_string();
    let mut roles = Vec::new();
    for name in &names.roles {
        match claim(claims, name) {
            Some(Value::Array(items)) => {
                roles.extend(items.iter().filter_map(Value::as_str).map(str::to_string))
            }
            Some(Value::String(words)) => {
                roles.extend(words.split_whitespace().map(str::to_string))
            }
            _ => {}
        }
    }
    roles.sort();
    roles.dedup();
    let tenant = claim(claims, &names.tenant)
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Verified {
        subject,
        roles,
        tenant,
    })
}

/// The validation of a token signed with `algorithm`.
fn validation(algorithm: Algorithm, expect: &Expectations) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    match &expect.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    if let Some(issuer) = &expect.issuer {
        validation.set_issuer(&[issuer]);
    }
    validation
}

/// Verifies `token` with the shared secret (HS256) or the provider's keys, and reads its
/// claims through `names`.
pub async fn verify(
    token: &str,
    secret: Option<&[u8]>,
    keys: Option<&KeySet>,
    expect: &Expectations,
    names: &ClaimNames,
) -> Result<Verified, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
    let (key, algorithm) = match header.alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = secret.ok_or_else(|| JwtError::NoKey("no JWT_SECRET".into()))?;
            (DecodingKey::from_secret(secret), Algorithm::HS256)
        }
        _ => {
            let keys = keys.ok_or_else(|| JwtError::NoKey("no JWKS configured".into()))?;
            keys.key(header.kid.as_deref()).await?
        }
    };
    if header.alg != algorithm {
        return Err(JwtError::Algorithm);
    }
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation(algorithm, expect))
        .map_err(|e| JwtError::Invalid(e.to_string()))?;
    read(&data.claims, names)
}

/// Where the keys come from.
#[derive(Debug, Clone)]
enum Source {
    Jwks(String),
    /// The issuer's discovery document names the JWKS.
    Discovery(String),
}

/// A key and the one algorithm it verifies.
type Key = (DecodingKey, Algorithm);

#[derive(Default)]
struct Cached {
    by_kid: HashMap<String, Key>,
    /// Keys published without a `kid`: used only when there is exactly one.
    unnamed: Vec<Key>,
    fetched: Option<Instant>,
    /// When a fetch was last tried (for the unknown-`kid` rate limit).
    tried: Option<Instant>,
}

/// An identity provider's signing keys, cached (see the module's docs).
pub struct KeySet {
    source: Source,
    client: reqwest::Client,
    refresh: Duration,
    min_refresh: Duration,
    cached: tokio::sync::Mutex<Cached>,
}

/// The algorithm a published key verifies: its `alg`, or what its type implies.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return match alg {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            // HMAC keys and encryption keys are not signing keys of a provider.
            _ => None,
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => {
            (okp.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA)
        }
        AlgorithmParameters::OctetKey(_) => None,
    }
}

impl KeySet {
    /// The key set configured by `settings`, if any: `JWT_JWKS_URL`, or an `http(s)://`
    /// `JWT_ISSUER` to discover.
    pub fn from_settings(settings: &app::settings::Settings) -> Option<Self> {
        let source = match (&settings.jwt_jwks_url, &settings.jwt_issuer) {
            (Some(url), _) if !url.trim().is_empty() => Source::Jwks(url.trim().to_string()),
            (_, Some(issuer))
                if issuer.starts_with("https://") || issuer.starts_with("http://") =>
            {
                Source::Discovery(issuer.trim_end_matches('/').to_string())
            }
            _ => return None,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        Some(Self {
            source,
            client,
            refresh: Duration::from_millis(settings.jwks_refresh_ms.max(1_000)),
            min_refresh: Duration::from_millis(settings.jwks_min_refresh_ms),
            cached: tokio::sync::Mutex::new(Cached::default()),
        })
    }

    async fn get_json(&self, url: &str) -> Result<Value, JwtError> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| JwtError::Keys(format!("{url}: {e}")))?;
        if !response.status().is_success() {
            return Err(JwtError::Keys(format!("{url}: {}", response.status())));
        }
        response
            .json()
            .await
            .map_err(|e| JwtError::Keys(format!("{url}: {e}")))
    }

    /// Fetches the keys into `cached`.
    async fn fetch(&self, cached: &mut Cached) -> Result<(), JwtError> {
        cached.tried = Some(Instant::now());
        let url = match &self.source {
            Source::Jwks(url) => url.clone(),
            Source::Discovery(issuer) => {
                let document = self
                    .get_json(&format!("{issuer}/.well-known/openid-configuration"))
                    .await?;
                document["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| JwtError::Keys("the discovery document has no jwks_uri".into()))?
                    .to_string()
            }
        };
        let set: JwkSet = serde_json::from_value(self.get_json(&url).await?)
            .map_err(|e| JwtError::Keys(format!("{url}: not a JWKS: {e}")))?;
        let mut by_kid = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            let (Some(algorithm), Ok(key)) = (algorithm_of(jwk), DecodingKey::from_jwk(jwk)) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), (key, algorithm));
                }
                None => unnamed.push((key, algorithm)),
            }
        }
        tracing::info!(
            keys = set.keys.len(),
            "fetched the identity provider's keys"
        );
        cached.by_kid = by_kid;
        cached.unnamed = unnamed;
        cached.fetched = Some(Instant::now());
        Ok(())
    }

    fn find(cached: &Cached, kid: Option<&str>) -> Option<Key> {
        match kid {
            Some(kid) => cached.by_kid.get(kid).cloned(),
            None if cached.unnamed.len() == 1 && cached.by_kid.is_empty() => {
                cached.unnamed.first().cloned()
            }
            None => None,
        }
    }

    /// The key (and its algorithm) for a token naming `kid`.
    pub async fn key(&self, kid: Option<&str>) -> Result<Key, JwtError> {
        let mut cached = self.cached.lock().await;
        // Due for a fetch; after a failed one, not again before the least interval.
        let due = cached.fetched.is_none_or(|at| at.elapsed() >= self.refresh);
        let rested = cached
            .tried
            .is_none_or(|at| at.elapsed() >= self.min_refresh);
        if cached.fetched.is_none() && !rested {
            return Err(JwtError::Keys(
                "the keys could not be fetched; retrying shortly".into(),
            ));
        }
        let stale = due && rested;
        if stale {
            // A failed refresh keeps the keys already known.
            if let Err(error) = self.fetch(&mut cached).await {
                tracing::warn!(%error, "the identity provider's keys could not be refreshed");
                if cached.fetched.is_none() {
                    return Err(error);
                }
            }
        }
        if let Some(key) = Self::find(&cached, kid) {
            return Ok(key);
        }
        // Perhaps a key rotated in since: look again, not more often than allowed.
        let may_fetch = !stale && rested;
        if may_fetch {
            self.fetch(&mut cached).await?;
            if let Some(key) = Self::find(&cached, kid) {
                return Ok(key);
            }
        }
        Err(JwtError::NoKey(format!("kid {kid:?}")))
    }
}
