//! `gateway log`: export the event log as JSON lines, and import such a file into another
//! database of either backend (the move from SQLite to PostgreSQL, backups and restores).
//! The file's format is [`eventlog::transfer`]'s.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use app::settings::Settings;
use eventlog::Cursor;
use eventlog::transfer::{self, Importer, MAX_LINE_BYTES};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// Write the event log (and the completed idempotency records) to stdout as JSON lines,
    /// with progress on stderr.
    Export {
        /// Export only the events after this cursor: the `lastCursor` of the previous export's
        /// last line, for an incremental backup.
        #[arg(long, value_name = "CURSOR")]
        from: Option<Cursor>,
    },
    /// Load an export from stdin into this database, in one transaction, then rebuild every
    /// read model. A whole-log export needs an empty database; an incremental one must
    /// continue the log already there.
    Import {
        /// Let the relay publish the imported events on NATS again. By default the relay
        /// starts after them: they were published when they were first written.
        #[arg(long)]
        republish: bool,
    },
}

/// Runs `gateway log …`.
pub async fn run(
    command: LogCommand,
    settings: Settings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        LogCommand::Export { from } => export(&settings, from.unwrap_or(Cursor::START), out).await,
        LogCommand::Import { republish } => {
            let mut stdin = tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin());
            import(&settings, &mut stdin, republish, out).await
        }
    }
}

/// Writes the log after `from` to `out` (see [`transfer::export`]), and a summary to stderr.
pub async fn export(settings: &Settings, from: Cursor, out: &mut dyn Write) -> anyhow::Result<()> {
    let log = app::open_log(settings).await?;
    let bar = progress_bar("{prefix:>8} [{bar:40}] {pos}/{len} events {per_sec} eta {eta}")?;
    bar.set_prefix("export");
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let summary = transfer::export(
        &log,
        from,
        settings.projector_batch_size.max(1),
        |line| {
            serde_json::to_writer(&mut out, line)?;
            out.write_all(b"\n")
        },
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await
    .context("exporting the log")?;
    out.flush().context("writing the export")?;
    bar.finish_and_clear();
    eprintln!(
        "exported {} events and {} idempotency records; next incremental export: --from {}",
        summary.events, summary.idempotency_records, summary.last_cursor
    );
    Ok(())
}

/// Loads an export read from `input` (see [`transfer::Importer`]), moves the relay past it
/// unless `republish`, commits, and rebuilds every read model. What it did is printed to
/// `out` as JSON lines: the import, then each projector's rebuild.
pub async fn import(
    settings: &Settings,
    input: &mut (dyn AsyncBufRead + Unpin + Send),
    republish: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let log = app::open_log(settings).await?;
    let bar = progress_bar("{prefix:>8} {pos} events {per_sec}")?;
    bar.set_prefix("import");
    // The relay skips the imported events only if it had published everything before them.
    let head_before = log.last_committed().await?;
    let mut importer = Importer::begin(&log).await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut *input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .context("reading the export")?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_LINE_BYTES {
            anyhow::bail!("a line of the export is longer than {MAX_LINE_BYTES} bytes");
        }
        importer.line(&line).await?;
        bar.set_position(importer.events());
    }
    let (mut tx, summary) = importer.finish().await?;
    if !republish && let Some(last) = summary.last_cursor {
        let relay = projections::checkpoints::read_in(&mut tx, workers::relay::CHECKPOINT).await?;
        if relay.unwrap_or(Cursor::START) >= head_before {
            projections::checkpoints::write_in(&mut tx, workers::relay::CHECKPOINT, last).await?;
        } else {
            eprintln!(
                "the relay has not yet published every event written before the import: it \
                 will publish the imported events too"
            );
        }
    }
    tx.commit().await.context("committing the import")?;
    if let Some(last) = summary.last_cursor {
        log.notify_appended(last);
    }
    bar.finish_and_clear();
    writeln!(
        out,
        "{}",
        serde_json::json!({
            "imported": {
                "events": summary.events,
                "idempotencyRecords": summary.idempotency_records,
                "lastCursor": summary.last_cursor.map(|c| c.to_string()),
                "republish": republish,
            }
        })
    )?;
    let all = projections::all();
    let every: Vec<_> = all.iter().collect();
    crate::projections::rebuild(&log, &every, settings.projector_batch_size.max(1), out).await
}

fn progress_bar(template: &str) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(template)
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Ok(bar)
}
