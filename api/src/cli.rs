//! The `gateway` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::settings::Settings;
use crate::startup::{self, Application};

/// The gateway: an event-sourced, multi-tenant HTTP backend.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub struct Cli {
    /// A TOML file of settings (environment variables still win).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP and run the projectors (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Projection maintenance.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Replay a projection from the start of the log into fresh tables, then swap them in.
    Rebuild {
        /// A projector name, or `all`.
        name: String,
    },
    /// Print each projector's checkpoint and lag as JSON.
    Status,
}

/// Runs the command line after settings are loaded and logging is set up.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(settings).await?;
            let token = app.shutdown_token();
            tokio::spawn(async move {
                startup::shutdown_signal().await;
                token.cancel();
            });
            app.run_until_stopped().await
        }
        Command::Migrate => {
            startup::open_log(&settings).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Projections(ProjectionsCommand::Rebuild { name }) => {
            let log = startup::open_log(&settings).await?;
            let all = projections::all();
            let selected: Vec<_> = all
                .iter()
                .filter(|p| name == "all" || p.name() == name)
                .collect();
            if selected.is_empty() {
                let known: Vec<_> = all.iter().map(|p| p.name()).collect();
                bail!("no projector named '{name}'; known: {}", known.join(", "));
            }
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
                let report = workers::rebuild::rebuild(
                    &log,
                    projector.as_ref(),
                    settings.projector_batch_size.max(1),
                    |done, total| {
                        bar.set_length(total);
                        bar.set_position(done);
                    },
                )
                .await
                .with_context(|| format!("rebuilding {}", projector.name()))?;
                bar.finish();
                let seconds = started.elapsed().as_secs_f64();
                println!(
                    "{}",
                    serde_json::json!({
                        "projector": projector.name(),
                        "events": report.events,
                        "seconds": seconds,
                        "eventsPerSecond": report.events as f64 / seconds.max(1e-9),
                        "checkpoint": report.cursor.to_string(),
                    })
                );
            }
            Ok(())
        }
        Command::Projections(ProjectionsCommand::Status) => {
            let log = startup::open_log(&settings).await?;
            for projector in projections::all() {
                let lag = projections::progress::lag(&log, projector.name()).await?;
                println!(
                    "{}",
                    serde_json::json!({
                        "projector": projector.name(),
                        "checkpoint": lag.checkpoint.to_string(),
                        "lagEvents": lag.events,
                        "lagSeconds": lag.seconds,
                    })
                );
            }
            Ok(())
        }
    }
}
