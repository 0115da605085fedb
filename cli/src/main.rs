//! The `gateway` binary: parse the command line, load settings, set up logging, run.
#![forbid(unsafe_code)]

use clap::Parser;

// glibc's allocator spent about a quarter of the gateway's CPU under load (perf, see
// docs/benchmarks.md); mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let settings = app::settings::Settings::load(cli.config.as_deref())?;
    settings.check_secrets()?;
    let target = match cli.command {
        None | Some(cli::Command::Serve(_)) => cli::telemetry::LogTarget::Stdout,
        Some(_) => cli::telemetry::LogTarget::Stderr,
    };
    let _telemetry = cli::telemetry::init(&settings, target)?;
    cli::run(cli, settings, &mut std::io::stdout()).await
}
