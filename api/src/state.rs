//! What every handler shares.

use std::sync::Arc;

use eventlog::EventLog;
use projections::Projector;
use projections::progress::Progress;

use crate::auth::{CredentialCache, LastUsed};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::settings::Settings;

/// Shared state of the HTTP layer. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub log: EventLog,
    pub progress: Progress,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    pub projectors: Arc<Vec<Arc<dyn Projector>>>,
    pub rate_limiter: Arc<RateLimiter>,
    /// Lookups of unknown API keys per client address (`GATEWAY_UNKNOWN_KEY_LOOKUPS_PER_MINUTE`).
    pub unknown_keys: Arc<RateLimiter>,
    pub last_used: Arc<LastUsed>,
    pub credentials: Arc<CredentialCache>,
    pub clock: domain::api_key::ApiKeyServices,
    /// The relay's health; `None` when no `NATS_URL` is configured.
    pub relay: Option<Arc<workers::relay::RelayStatus>>,
    /// The AI providers agents call.
    pub providers: Arc<crate::providers::Providers>,
    /// Cancelled when the gateway starts shutting down: long-lived responses (live streams)
    /// end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl domain::clock::Clock for SystemClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}
