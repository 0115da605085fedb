//! The services every use case shares.

use std::sync::Arc;

use anyhow::Context;

use eventlog::idempotency::StoredResponse;
use eventlog::{Db, EventLog};
use projections::Projector;
use projections::progress::Progress;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::settings::Settings;

/// How the transport answers a refusal: the stored form of the response a client receives for
/// `error` in request `request_id`. Given by the transport, which owns status codes and the
/// error envelope; a refusal stored under an idempotency key is replayed byte for byte.
pub type RenderRefusal = fn(&Error, &str) -> StoredResponse;

/// The gateway's services. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub log: EventLog,
    pub progress: Progress,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    pub projectors: Arc<Vec<Arc<dyn Projector>>>,
    pub clock: domain::api_key::ApiKeyServices,
    /// The relay's health; `None` when no `NATS_URL` is configured.
    pub relay: Option<Arc<workers::relay::RelayStatus>>,
    /// The AI providers agents call.
    pub providers: Arc<Providers>,
    /// Cancelled when the gateway starts shutting down: long-lived work ends on it.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub render_refusal: RenderRefusal,
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl domain::clock::Clock for SystemClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

/// Connects to the configured database and applies the migrations.
pub async fn open_log(settings: &Settings) -> anyhow::Result<EventLog> {
    let url = settings.database_url();
    let db = Db::connect(&url, &settings.pool())
        .await
        .context("connecting to the database")?;
    db.migrate().await.context("applying migrations")?;
    Ok(EventLog::with_inline(
        db,
        domain::upcasters::all(),
        vec![Arc::new(projections::usage::SpendProjection)],
    ))
}
