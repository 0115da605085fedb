//! The `gateway` binary: [`startup`], the composition root (connect, migrate, start the
//! workers and the relay, bind, serve, shut down gracefully), which `serve` and the black-box
//! tests both use; and the command line, one module per subcommand, each calling the same use
//! cases (`app`) as the HTTP API.
#![forbid(unsafe_code)]

pub mod demo;
pub mod keys;
pub mod log;
pub mod projections;
pub mod relay;
pub mod seed;
pub mod serve;
pub mod startup;
pub mod subscribe;
pub mod telemetry;
pub mod tenants;
pub mod token;
pub mod usage;

use std::io::Write;
use std::path::PathBuf;

use app::settings::Settings;
use clap::{Parser, Subcommand};

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
    /// Serve HTTP and run the projectors and the relay (the default), or some of them.
    Serve(serve::ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Export the event log as JSON lines, or import such a file (moving to PostgreSQL,
    /// backups and restores).
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Projection maintenance.
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Tenants.
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// The NATS relay.
    #[command(subcommand)]
    Relay(relay::RelayCommand),
    /// Consume the NATS stream as a downstream service would (durable pull consumer, each
    /// event applied once, double ack); prints each event's envelope as a JSON line.
    Subscribe(subscribe::Subscribe),
    /// API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Demo and benchmark data.
    #[command(subcommand)]
    Seed(seed::SeedCommand),
    /// Usage metering.
    #[command(subcommand)]
    Usage(usage::UsageCommand),
    /// Print a signed service JWT (needs JWT_SECRET), for development and scripts.
    Token(token::Token),
}

/// Runs the command line after settings are loaded and logging is set up. What a command
/// prints for its user goes to `out`.
pub async fn run(cli: Cli, settings: Settings, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli
        .command
        .unwrap_or(Command::Serve(serve::ServeArgs::default()))
    {
        Command::Serve(args) => serve::serve(args, settings).await,
        Command::Migrate => serve::migrate(settings).await,
        Command::Log(command) => log::run(command, settings, out).await,
        Command::Projections(command) => projections::run(command, settings, out).await,
        Command::Tenants(command) => tenants::run(command, settings, out).await,
        Command::Relay(command) => relay::run(command, settings, out).await,
        Command::Subscribe(args) => subscribe::run(args, settings, out).await,
        Command::Keys(command) => keys::run(command, settings, out).await,
        Command::Seed(command) => seed::run(command, settings, out).await,
        Command::Usage(command) => usage::run(command, settings, out).await,
        Command::Token(args) => token::run(args, settings, out),
    }
}
