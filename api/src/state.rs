//! What every handler shares.

use std::sync::Arc;

use eventlog::EventLog;
use projections::Projector;
use projections::progress::Progress;

use crate::metrics::Metrics;
use crate::settings::Settings;

/// Shared state of the HTTP layer. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub log: EventLog,
    pub progress: Progress,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    pub projectors: Arc<Vec<Arc<dyn Projector>>>,
}
