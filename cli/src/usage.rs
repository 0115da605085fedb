//! `gateway usage`: verify the usage read models against the log, and repair them.

use std::io::Write;

use anyhow::{Context, bail};
use app::settings::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum UsageCommand {
    /// Recompute every usage total from the event log and compare it with the rollups and
    /// the budget spend, to the micro-dollar; prints each difference as a JSON object and
    /// exits with an error on any.
    Verify {
        /// On a difference, rebuild the usage read models from the log (the rollups, records
        /// and sessions by a rebuild, the budget spend in place), then verify again.
        #[arg(long)]
        repair: bool,
    },
}

/// Runs `gateway usage …`.
pub async fn run(
    command: UsageCommand,
    settings: Settings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        UsageCommand::Verify { repair } => {
            let log = app::open_log(&settings).await?;
            let batch = settings.projector_batch_size.max(1);
            let report = projections::usage::verify(&log, batch).await?;
            if report.mismatches.is_empty() || !repair {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                if !report.mismatches.is_empty() {
                    bail!(
                        "{} difference(s) between the log and the usage tables (--repair rebuilds them from the log)",
                        report.mismatches.len()
                    );
                }
                return Ok(());
            }
            let usage = projections::usage::UsageProjector;
            let rebuilt = workers::rebuild::rebuild(&log, &usage, batch, |_, _| {})
                .await
                .context("rebuilding the usage tables")?;
            let spend_rows = projections::usage::repair_spend(&log, batch)
                .await
                .context("recomputing the budget spend")?;
            let after = projections::usage::verify(&log, batch).await?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "before": report,
                    "repair": { "eventsReplayed": rebuilt.events, "spendRows": spend_rows },
                    "after": after,
                }))?
            )?;
            if !after.mismatches.is_empty() {
                bail!(
                    "{} difference(s) remain after the repair",
                    after.mismatches.len()
                );
            }
            Ok(())
        }
    }
}
