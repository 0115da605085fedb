//! `gateway relay`: publish again from a cursor.

use std::io::Write;

use app::settings::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum RelayCommand {
    /// Publish again every event after a cursor (`beginning` for all). JetStream drops the
    /// copies of events it stored within its duplicate window; older ones arrive twice.
    Replay {
        #[arg(long, value_name = "CURSOR|beginning")]
        from: String,
    },
}

/// Runs `gateway relay …`.
pub async fn run(
    command: RelayCommand,
    settings: Settings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        RelayCommand::Replay { from } => {
            let log = app::open_log(&settings).await?;
            let cursor = if from == "beginning" {
                eventlog::Cursor::START
            } else {
                from.parse::<eventlog::Cursor>()
                    .map_err(|_| anyhow::anyhow!("--from takes a cursor or 'beginning'"))?
            };
            workers::relay::replay_from(&log, cursor).await?;
            let (behind, _) = log.backlog(cursor).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({ "relayCheckpoint": cursor.to_string(), "eventsToPublish": behind })
            )?;
            Ok(())
        }
    }
}
