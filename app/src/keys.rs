//! API key tokens: `gw_<key id>_<secret>`.
//!
//! The key id (`key_` and 20 lower-case letters or digits) is not secret: it names the key in
//! `GET /v1/api-keys` and is how a presented token is looked up. The secret is 32 random bytes
//! (256 bits) in URL-safe base64; only its SHA-256 is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

const PREFIX: &str = "gw_";
const ID_LEN: usize = 24;
const SECRET_LEN: usize = 43;
const TOKEN_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN;

/// A freshly generated key: its id, the token to hand out once, and the hash to store.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub id: String,
    pub token: String,
    pub secret_hash: String,
}

/// A new random key id.
pub fn new_key_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = OsRng;
    let suffix: String = (0..ID_LEN - 4)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("key_{suffix}")
}

/// Generates a key with id `id` (a new random id when `None`).
pub fn generate(id: Option<String>) -> GeneratedKey {
    let id = id.unwrap_or_else(new_key_id);
    let mut secret = [0u8; 32];
    OsRng.fill(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    GeneratedKey {
        token: format!("{PREFIX}{id}_{secret}"),
        secret_hash: hash_secret(&secret),
        id,
    }
}

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    crate::idempotency::hex(&Sha256::digest(secret.as_bytes()))
}

/// Splits a presented token into key id and secret, if it has the right shape.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    if token.len() != TOKEN_LEN || !token.is_ascii() {
        return None;
    }
    let rest = token.strip_prefix(PREFIX)?;
    let (id, rest) = rest.split_at(ID_LEN);
    let secret = rest.strip_prefix('_')?;
    id.starts_with("key_").then_some((id, secret))
}

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    // Empty input never matches, whatever it is compared with.
    !a.is_empty()
        && a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn empty_input_never_matches() {
        assert!(!constant_time_eq("", ""));
        assert!(!constant_time_eq("", "secret"));
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secret", "secreT"));
    }
}
