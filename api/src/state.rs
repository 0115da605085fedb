//! What every handler shares: the application's services and the HTTP layer's own state.

use std::ops::Deref;
use std::sync::Arc;

use app::App;

use crate::credentials::{CredentialCache, LastUsed};
use crate::rate_limit::RateLimiter;

/// Shared state of the HTTP layer. Cheap to clone; dereferences to the [`App`] it serves.
#[derive(Clone)]
pub struct AppState {
    pub app: App,
    pub rate_limiter: Arc<RateLimiter>,
    /// Lookups of unknown API keys per client address (`GATEWAY_UNKNOWN_KEY_LOOKUPS_PER_MINUTE`).
    pub unknown_keys: Arc<RateLimiter>,
    pub last_used: Arc<LastUsed>,
    pub credentials: Arc<CredentialCache>,
    /// The identity provider's signing keys, when JWKS verification is configured.
    pub jwks: Option<Arc<crate::auth::jwt::KeySet>>,
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}
