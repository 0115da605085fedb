//! `gateway seed`: demo and benchmark data.

use std::io::Write;

use anyhow::Context;
use app::settings::Settings;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, clap::Subcommand)]
pub enum SeedCommand {
    /// A demo tenant with admin, writer and analyst keys, two agents, four sessions and
    /// eight messages, all through the HTTP API; prints the keys (shown only here).
    Demo {
        #[arg(long, default_value = "demo")]
        tenant: String,
        #[arg(long, default_value = "Demo Corporation")]
        name: String,
    },
    /// Billed replies for benchmarks, appended as events in batches with times spread over
    /// the last `--days` days, then projected; prints timings as JSON.
    Usage {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value = "usage-bench")]
        tenant: String,
        #[arg(long, default_value_t = 365)]
        days: i64,
        #[arg(long, default_value_t = 20)]
        agents: usize,
    },
    /// Records of an `items` type with indexed fields, created through the command path in
    /// batches (one commit per batch), then projected; prints timings and a reader key.
    Entities {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value = "entity-bench")]
        tenant: String,
        /// Records per commit.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Batches in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Seed 003's data set in a new tenant: users, projects (each owned by a user, with two
    /// `members`) and resources (each in a project, with two `users`), about 1.2 relation
    /// edges per record, created through the command path in batches, then projected;
    /// prints timings and a reader key.
    Relations {
        #[arg(long, default_value = "ddms-demo")]
        tenant: String,
        #[arg(long, env = "SEED_USERS", default_value_t = 400_000)]
        users: u64,
        #[arg(long, env = "SEED_PROJECTS", default_value_t = 300_000)]
        projects: u64,
        #[arg(long, env = "SEED_RESOURCES", default_value_t = 300_000)]
        resources: u64,
        /// Operations per commit.
        #[arg(long, env = "SEED_BATCH_SIZE", default_value_t = 1_000)]
        batch: usize,
        /// Commits in flight.
        #[arg(long, env = "SEED_CONCURRENCY", default_value_t = 4)]
        concurrency: usize,
    },
}

/// Runs `gateway seed …`.
pub async fn run(
    command: SeedCommand,
    settings: Settings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        SeedCommand::Demo { tenant, name } => {
            let summary = crate::demo::demo(settings, &tenant, &name).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
            Ok(())
        }
        SeedCommand::Usage {
            count,
            tenant,
            days,
            agents,
        } => {
            let bar = seed_bar(count)?;
            let report = app::seed::usage(
                &settings,
                &tenant,
                count,
                days,
                agents,
                |stage, done, total| advance(&bar, stage, done, total),
            )
            .await?;
            bar.finish();
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            Ok(())
        }
        SeedCommand::Entities {
            count,
            tenant,
            batch,
            concurrency,
        } => {
            let bar = seed_bar(count)?;
            let report = app::seed::entities(
                &settings,
                &tenant,
                count,
                batch,
                concurrency,
                |stage, done, total| advance(&bar, stage, done, total),
            )
            .await?;
            bar.finish();
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            Ok(())
        }
        SeedCommand::Relations {
            tenant,
            users,
            projects,
            resources,
            batch,
            concurrency,
        } => {
            let bar = seed_bar(users)?;
            let shape = app::seed::RelationShape {
                users,
                projects,
                resources,
                batch,
                concurrency,
            };
            let report = app::seed::relations(&settings, &tenant, shape, |stage, done, total| {
                advance(&bar, stage, done, total)
            })
            .await?;
            bar.finish();
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            Ok(())
        }
    }
}

/// The progress bar of the seeds: a stage name, then done of total.
fn seed_bar(count: u64) -> anyhow::Result<ProgressBar> {
    Ok(ProgressBar::new(count).with_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .context("progress bar template")?
            .progress_chars("=> "),
    ))
}

fn advance(bar: &ProgressBar, stage: &str, done: u64, total: u64) {
    bar.set_prefix(stage.to_string());
    bar.set_length(total);
    bar.set_position(done);
}
