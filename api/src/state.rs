//! What every handler shares: the application's services and the HTTP layer's own state.

use std::ops::Deref;
use std::sync::Arc;

use app::App;

use crate::credentials::{CredentialCache, LastUsed};
use crate::rate_limit::RateLimiter;

/// Shared state of the HTTP layer: one reference count to clone (every extractor of every
/// request clones it); dereferences to [`Services`] and through it to the [`App`] it serves.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Services {
    pub app: App,
    pub rate_limiter: Arc<RateLimiter>,
    /// Lookups of unknown API keys per client address (`GATEWAY_UNKNOWN_KEY_LOOKUPS_PER_MINUTE`).
    pub unknown_keys: Arc<RateLimiter>,
    pub last_used: Arc<LastUsed>,
    pub credentials: Arc<CredentialCache>,
    /// The identity provider's signing keys, when JWKS verification is configured.
    pub jwks: Option<Arc<crate::auth::jwt::KeySet>>,
}

impl Deref for Services {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}
