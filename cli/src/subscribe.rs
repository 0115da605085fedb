//! `gateway subscribe`: consume the NATS stream as a downstream service would.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use app::settings::Settings;

/// The arguments of `gateway subscribe`.
#[derive(Debug, clap::Args)]
pub struct Subscribe {
    /// The durable consumer's name; it remembers its position across runs.
    #[arg(long)]
    pub durable: String,
    /// Subject filter, e.g. `gateway.acme.Entity.>`.
    #[arg(long)]
    pub filter: Option<String>,
    /// SQLite file of processed event ids (and the example's effects).
    #[arg(long, default_value = "./data/consumer.db")]
    pub state: PathBuf,
    /// Stop after this many events.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop when no event arrived for this many seconds.
    #[arg(long)]
    pub idle_secs: Option<u64>,
}

/// Runs `gateway subscribe`.
pub async fn run(args: Subscribe, settings: Settings, out: &mut dyn Write) -> anyhow::Result<()> {
    let Subscribe {
        durable,
        filter,
        state,
        max,
        idle_secs,
    } = args;
    let url = settings.nats_url.clone().context("NATS_URL is not set")?;
    if let Some(parent) = state.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let consumer = workers::consumer::ConsumerSettings {
        url,
        stream: settings.nats_stream.clone(),
        durable,
        filter_subject: filter,
        state,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        crate::startup::shutdown_signal().await;
        token.cancel();
    });
    let report = workers::consumer::run(
        &consumer,
        max,
        idle_secs.map(Duration::from_secs),
        out,
        shutdown,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        applied = report.applied,
        duplicates = report.skipped_duplicates,
        "consumer stopped"
    );
    Ok(())
}
