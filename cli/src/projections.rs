//! `gateway projections`: rebuild a projection, or show every projector's lag.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use app::settings::Settings;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, clap::Subcommand)]
pub enum ProjectionsCommand {
    /// Replay a projection from the start of the log into fresh tables, then swap them in.
    Rebuild {
        /// A projector name, or `all`.
        name: String,
    },
    /// Print each projector's checkpoint and lag as JSON.
    Status,
}

/// Runs `gateway projections …`.
pub async fn run(
    command: ProjectionsCommand,
    settings: Settings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Rebuild { name } => {
            let log = app::open_log(&settings).await?;
            let all = projections::all();
            let selected: Vec<_> = all
                .iter()
                .filter(|p| name == "all" || p.name() == name)
                .collect();
            if selected.is_empty() {
                let known: Vec<_> = all.iter().map(|p| p.name()).collect();
                bail!("no projector named '{name}'; known: {}", known.join(", "));
            }
            rebuild(&log, &selected, settings.projector_batch_size.max(1), out).await
        }
        ProjectionsCommand::Status => {
            let log = app::open_log(&settings).await?;
            for projector in projections::all() {
                let lag = projections::progress::lag(&log, projector.name()).await?;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "projector": projector.name(),
                        "checkpoint": lag.checkpoint.to_string(),
                        "lagEvents": lag.events,
                        "lagSeconds": lag.seconds,
                    })
                )?;
            }
            Ok(())
        }
    }
}

/// Rebuilds `selected` one after the other, with a progress bar each on stderr and a JSON
/// line each on `out`.
pub(crate) async fn rebuild(
    log: &eventlog::EventLog,
    selected: &[&std::sync::Arc<dyn projections::Projector>],
    batch_size: usize,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for projector in selected {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:40}] {pos}/{len} events {per_sec} eta {eta}",
            )
            .context("progress bar template")?
            .progress_chars("=> "),
        );
        bar.set_prefix(projector.name());
        bar.enable_steady_tick(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let report =
            workers::rebuild::rebuild(log, projector.as_ref(), batch_size, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await
            .with_context(|| format!("rebuilding {}", projector.name()))?;
        bar.finish();
        let seconds = started.elapsed().as_secs_f64();
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "projector": projector.name(),
                "events": report.events,
                "seconds": seconds,
                "eventsPerSecond": report.events as f64 / seconds.max(1e-9),
                "checkpoint": report.cursor.to_string(),
                "fillSeconds": report.fill.as_secs_f64(),
                "indexSeconds": report.indexes.as_secs_f64(),
                "swapSeconds": report.swap.as_secs_f64(),
            })
        )?;
    }
    Ok(())
}
