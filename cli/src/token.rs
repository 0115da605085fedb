//! `gateway token`: a signed service JWT, for development and scripts.

use std::io::Write;

use anyhow::Context;
use api::auth::jwt;
use app::settings::Settings;
use secrecy::ExposeSecret;

/// The arguments of `gateway token`.
#[derive(Debug, clap::Args)]
pub struct Token {
    /// The `service` claim.
    #[arg(long)]
    pub service: String,
    /// Comma-separated roles.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// The `tenant` claim.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: i64,
}

/// Runs `gateway token`.
pub fn run(args: Token, settings: Settings, out: &mut dyn Write) -> anyhow::Result<()> {
    let Token {
        service,
        roles,
        tenant,
        ttl,
    } = args;
    let secret = settings
        .jwt_secret
        .as_ref()
        .context("JWT_SECRET is not set")?;
    let claims = jwt::Claims {
        service: Some(service),
        sub: None,
        roles,
        tenant,
        exp: chrono::Utc::now().timestamp() + ttl,
        nbf: None,
        iss: settings.jwt_issuer.clone(),
        aud: settings
            .jwt_audience
            .clone()
            .map_or(serde_json::Value::Null, serde_json::Value::String),
    };
    writeln!(
        out,
        "{}",
        jwt::sign(&claims, secret.expose_secret().as_bytes())
    )?;
    Ok(())
}
