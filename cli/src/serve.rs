//! `gateway serve` (the default) and `gateway migrate`.

use crate::startup::{self, Application};
use app::settings::Settings;

/// The arguments of `gateway serve`.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// What this process does: `api`, `projectors`, `relay`, comma-separated (default: all;
    /// also `GATEWAY_ROLES`). Projector and relay processes keep one leader per database.
    #[arg(long, value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
}

/// Serves HTTP and runs the workers until a shutdown signal.
pub async fn serve(args: ServeArgs, mut settings: Settings) -> anyhow::Result<()> {
    if let Some(roles) = args.roles {
        settings.roles = roles.join(",");
    }
    let mut app = Application::build(settings).await?;
    if let Some(key) = app.take_bootstrap_key() {
        // On stderr, apart from the log stream (stdout), which is often shipped
        // somewhere a secret must not go.
        eprintln!(
            "{}",
            serde_json::json!({
                "platformAdminKey": key,
                "note": "generated on first start; shown once, only its hash is stored",
            })
        );
    }
    let token = app.shutdown_token();
    tokio::spawn(async move {
        startup::shutdown_signal().await;
        token.cancel();
    });
    app.run_until_stopped().await
}

/// Applies the database migrations.
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    app::open_log(&settings).await?;
    tracing::info!("migrations applied");
    Ok(())
}
