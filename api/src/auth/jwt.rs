//! HS256 JSON Web Tokens for service-to-service calls.
//!
//! Only `HS256` is accepted (a token naming any other algorithm, including `none`, is
//! refused), the signature is checked in constant time before the claims are read, and `exp`
//! is required. `iss` and `aud` are checked when configured.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: i64 = 30;

/// The claims the gateway reads.
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

impl Claims {
    /// The principal's name: `service`, else `sub`.
    pub fn subject(&self) -> Option<&str> {
        self.service
            .as_deref()
            .or(self.sub.as_deref())
            .filter(|s| !s.is_empty())
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
    #[error("unsupported algorithm")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("no subject")]
    Subject,
}

/// Verifies `token` with `secret` and returns its claims.
pub fn verify(
    token: &str,
    secret: &[u8],
    expect: &Expectations,
    now: i64,
) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| JwtError::Malformed)?,
    )
    .map_err(|_| JwtError::Malformed)?;
    if header["alg"] != "HS256" {
        return Err(JwtError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| JwtError::Signature)?;
    let signing_input = token.rsplit_once('.').map_or("", |(input, _)| input);
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::Signature)?;
    let claims: Claims = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| JwtError::Malformed)?,
    )
    .map_err(|_| JwtError::Malformed)?;
    if claims.exp + LEEWAY_SECONDS < now {
        return Err(JwtError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_SECONDS > now) {
        return Err(JwtError::NotYetValid);
    }
    if let Some(issuer) = &expect.issuer
        && claims.iss.as_deref() != Some(issuer.as_str())
    {
        return Err(JwtError::Issuer);
    }
    if let Some(audience) = &expect.audience {
        let matches = match &claims.aud {
            Value::String(aud) => aud == audience,
            Value::Array(auds) => auds.iter().any(|aud| aud == audience.as_str()),
            _ => false,
        };
        if !matches {
            return Err(JwtError::Audience);
        }
    }
    if claims.subject().is_none() {
        return Err(JwtError::Subject);
    }
    Ok(claims)
}

/// Signs `claims` with HS256 (for `gateway token` and tests).
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}
