//! What authentication keeps in memory between requests: credentials read a moment ago, and
//! when keys were last used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use projections::api_keys::Credential;

/// When keys were last used, kept in memory and written out periodically, so that a request
/// never writes an event (or a row) just for being made.
#[derive(Debug, Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl LastUsed {
    pub fn touch(&self, key_id: &str) {
        self.pending
            .lock()
            .expect("last-used lock poisoned")
            .insert(key_id.to_string(), Utc::now());
    }

    /// Writes out and forgets what was collected.
    pub async fn flush(&self, db: &eventlog::Db) -> Result<(), sqlx::Error> {
        let uses: Vec<_> =
            std::mem::take(&mut *self.pending.lock().expect("last-used lock poisoned"))
                .into_iter()
                .collect();
        projections::api_keys::record_last_used(db, &uses).await
    }
}

/// API keys (with their tenant's status and rate limit) as the read model held them a moment
/// ago, so that a client's requests do not each read them. An entry lives at most `ttl`
/// (`GATEWAY_CREDENTIAL_CACHE_MS`): a revoked key, a changed role or a suspended tenant takes
/// effect within that time once the projection has it. Unknown keys are not remembered.
#[derive(Debug)]
pub struct CredentialCache {
    ttl: std::time::Duration,
    entries: Mutex<HashMap<String, (std::time::Instant, Arc<Credential>)>>,
}

/// Most keys remembered; past it the cache starts over.
const CREDENTIAL_CACHE_ENTRIES: usize = 10_000;

impl CredentialCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key's credential if it was read less than `ttl` ago.
    pub fn get(&self, key_id: &str) -> Option<Arc<Credential>> {
        let entries = self.entries.lock().expect("credential cache lock poisoned");
        let (read_at, credential) = entries.get(key_id)?;
        (read_at.elapsed() < self.ttl).then(|| credential.clone())
    }

    /// Remembers a credential just read; returns it.
    pub fn insert(&self, credential: Credential) -> Arc<Credential> {
        let credential = Arc::new(credential);
        if self.ttl.is_zero() {
            return credential;
        }
        let mut entries = self.entries.lock().expect("credential cache lock poisoned");
        if entries.len() >= CREDENTIAL_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(
            credential.key_id.clone(),
            (std::time::Instant::now(), credential.clone()),
        );
        credential
    }
}
