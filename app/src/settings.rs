//! The gateway's one typed configuration, loaded once in `main`.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file (`--config` or
//! `GATEWAY_CONFIG`), then environment variables. The variables are the names operators
//! already know (`DATABASE_URL`, `PORT`, `RUST_LOG`) and `GATEWAY_*` for the rest;
//! docs/configuration.md lists every one with its default. Nothing else in the gateway reads
//! the environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use domain::provider::RetryPolicy;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::providers::simulated::Simulation;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable otherwise.
    Auto,
    Json,
    Pretty,
}

/// Every setting of the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// `postgres://…` for PostgreSQL; unset means a SQLite file in `data_dir`.
    #[serde(serialize_with = "serialize_secret_option")]
    pub database_url: Option<SecretString>,
    /// Folder of the embedded SQLite database.
    pub data_dir: PathBuf,
    /// Most connections in the database pool.
    pub database_max_connections: u32,
    /// Longest a request waits for a database connection before it fails with 503
    /// `DATABASE_UNAVAILABLE` (and `Retry-After`), in milliseconds.
    pub database_acquire_timeout_ms: u64,
    /// `RUST_LOG`-style filter.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the OTLP/HTTP collector spans are exported to (its base
    /// URL; traces go to `<endpoint>/v1/traces`). Unset or empty: no export.
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (the default) or `http/json`.
    pub otel_exporter_otlp_protocol: String,
    /// `OTEL_SERVICE_NAME`: the `service.name` of the exported spans.
    pub otel_service_name: String,
    /// Run the projectors in this process.
    pub run_projectors: bool,
    /// What this process does, comma-separated: `api` (the HTTP API), `projectors` (the
    /// projector runners, the index builder and the idempotency reaper), `relay` (the NATS
    /// relay, with `NATS_URL`). Every process serves `/health`, `/ready` and `/metrics`.
    pub roles: String,
    /// Most events a projector applies in one transaction.
    pub projector_batch_size: usize,
    /// How often an idle projector looks at the log without a wake-up, in milliseconds.
    pub projector_poll_ms: u64,
    /// How long a woken projector waits for more appends before reading, in milliseconds.
    pub projector_coalesce_ms: u64,
    /// How long an API key read for authentication is reused, in milliseconds (0: read it
    /// for every request).
    pub credential_cache_ms: u64,
    /// Longest a read with `x-min-position` waits for the projection, in milliseconds.
    pub consistency_wait_ms: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered 503, in milliseconds.
    pub request_timeout_ms: u64,
    /// Longest shutdown waits for requests and workers to finish, in seconds.
    pub shutdown_grace_secs: u64,
    /// Longest a client may take to send a request's head (slow-header clients).
    pub header_read_timeout_ms: u64,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// Most connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Longest request target (path and query) in bytes; longer: 414.
    pub max_uri_bytes: usize,
    /// Most bytes of request headers (names and values); more: 431.
    pub max_header_bytes: usize,
    /// Most distinct indexes (indexed or unique fields, by name and kind) one tenant's entity
    /// types may need.
    pub max_indexed_fields_per_tenant: usize,
    /// Longest a message waits for messages in flight to free a hard budget's rest, in
    /// milliseconds (then 503 `BUDGET_CONTENDED`).
    pub budget_wait_ms: u64,
    /// How often a live stream checks its credentials again (revoked, expired, suspended).
    pub stream_recheck_ms: u64,
    /// How often the WebSocket channel pings its clients; a connection that misses two pings
    /// in a row is closed.
    pub ws_heartbeat_ms: u64,
    /// Messages a WebSocket connection holds for a client that reads slowly.
    pub ws_buffer: usize,
    /// How long a WebSocket connection's buffer may stay full (or one write take) before
    /// the client is closed as a slow consumer.
    pub ws_send_timeout_ms: u64,
    /// Lookups of well-formed but unknown API keys one client address may cause per minute;
    /// more are refused before they reach the database.
    pub unknown_key_lookups_per_minute: u32,
    /// The platform admin key (role superadmin). Unset: in embedded mode one is generated on
    /// first start and printed once.
    #[serde(serialize_with = "serialize_secret_option")]
    pub admin_key: Option<SecretString>,
    /// HS256 secret of service JWTs; unset means HS256 tokens are refused.
    #[serde(serialize_with = "serialize_secret_option")]
    pub jwt_secret: Option<SecretString>,
    /// Required `iss` of service JWTs, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` of service JWTs, when set.
    pub jwt_audience: Option<String>,
    /// Where the identity provider publishes its signing keys (a JWKS). Unset, with
    /// `JWT_ISSUER` an `http(s)://` URL: found through the issuer's
    /// `/.well-known/openid-configuration`.
    pub jwt_jwks_url: Option<String>,
    /// The claim (a dotted path) that holds a token's tenant.
    pub jwt_tenant_claim: String,
    /// The claims (comma-separated dotted paths) that hold a token's roles: arrays of
    /// strings, or space-separated strings such as `scope`; roles found in any of them count.
    pub jwt_roles_claim: String,
    /// The claims (comma-separated, first present wins) that name a token's principal.
    pub jwt_subject_claim: String,
    /// TLS on the listener: the certificate chain (PEM file). With `tls_key`; unset: plain HTTP.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `tls_cert` (PEM file).
    pub tls_key: Option<std::path::PathBuf>,
    /// CA certificates (PEM file) that client certificates are verified against; clients
    /// may then show one (and the handshake fails for one that does not verify).
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// How often the signing keys are fetched again, in milliseconds.
    pub jwks_refresh_ms: u64,
    /// The least time between two fetches of the keys that a token with an unknown `kid`
    /// causes, in milliseconds.
    pub jwks_min_refresh_ms: u64,
    /// Serve `/metrics` without credentials.
    pub metrics_public: bool,
    /// Requests per minute per API key or JWT service, unless the tenant has its own limit.
    pub rate_limit_per_minute: u32,
    /// How long idempotency records are kept, in hours.
    pub idempotency_retention_hours: u64,
    /// How long a request holds its idempotency key before a retry may take it over, in
    /// seconds (only matters when a request died without answering).
    pub idempotency_lock_secs: u64,
    /// `nats://…`: publish every event to JetStream. Unset: no relay.
    pub nats_url: Option<String>,
    /// JetStream stream the relay creates or updates on start.
    pub nats_stream: String,
    /// First token of every subject; the stream takes `<prefix>.>`.
    pub nats_subject_prefix: String,
    /// How long the stream keeps messages, in hours.
    pub nats_max_age_hours: u64,
    /// JetStream's duplicate window (deduplication by event id), in seconds.
    pub nats_duplicate_window_secs: u64,
    pub nats_replicas: usize,
    /// Most events the relay publishes per batch (and per transaction).
    pub relay_batch_size: usize,
    /// Most publishes awaiting JetStream's acknowledgement at once.
    pub relay_max_in_flight: usize,
    /// The AI providers agents may use, by name. Default: the simulated `vendorA` ($0.002
    /// per 1k tokens) and `vendorB` ($0.003).
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Timeout, retries and backoff of provider calls.
    pub provider_retry: RetryPolicy,
    /// Most earlier messages of a session sent to the provider as context.
    pub context_messages: usize,
}

pub(crate) fn serialize_secret_option<S: serde::Serializer>(
    value: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    // Only used to seed figment with defaults; a configured URL is never printed.
    value
        .as_ref()
        .map(|secret| secret.expose_secret().to_string())
        .serialize(serializer)
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            database_url: None,
            data_dir: PathBuf::from("./data"),
            database_max_connections: 16,
            database_acquire_timeout_ms: 2_000,
            log_filter: "info".into(),
            log_format: LogFormat::Auto,
            otel_exporter_otlp_endpoint: None,
            otel_exporter_otlp_protocol: "http/protobuf".into(),
            otel_service_name: "gateway".into(),
            run_projectors: true,
            roles: "api,projectors,relay".into(),
            projector_batch_size: 500,
            projector_poll_ms: 500,
            projector_coalesce_ms: 5,
            credential_cache_ms: 1000,
            consistency_wait_ms: 2000,
            max_body_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            shutdown_grace_secs: 30,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_connections: 1024,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            unknown_key_lookups_per_minute: 60,
            stream_recheck_ms: 5_000,
            ws_heartbeat_ms: 15_000,
            ws_buffer: 256,
            ws_send_timeout_ms: 10_000,
            budget_wait_ms: 10_000,
            max_indexed_fields_per_tenant: 32,
            admin_key: None,
            jwt_secret: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_jwks_url: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            jwt_tenant_claim: "tenant".into(),
            jwt_roles_claim: "roles".into(),
            jwt_subject_claim: "service,sub,azp,client_id".into(),
            jwks_refresh_ms: 300_000,
            jwks_min_refresh_ms: 10_000,
            metrics_public: true,
            rate_limit_per_minute: 6000,
            idempotency_retention_hours: 24,
            idempotency_lock_secs: 60,
            nats_url: None,
            nats_stream: "GATEWAY".into(),
            nats_subject_prefix: "gateway".into(),
            nats_max_age_hours: 24 * 7,
            nats_duplicate_window_secs: 120,
            nats_replicas: 1,
            relay_batch_size: 500,
            relay_max_in_flight: 256,
            providers: default_providers(),
            provider_retry: RetryPolicy::default(),
            context_messages: 20,
        }
    }
}

/// The fewest bytes a secret setting (`GATEWAY_ADMIN_KEY`, `JWT_SECRET`) may have.
pub const MIN_SECRET_BYTES: usize = 32;

impl Settings {
    /// Loads settings from defaults, the optional TOML file and the environment.
    pub fn load(config_file: Option<&std::path::Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let file = config_file
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("GATEWAY_CONFIG").map(PathBuf::from));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::raw()
                    .only(&[
                        "DATABASE_URL",
                        "PORT",
                        "HOST",
                        "RUST_LOG",
                        "DATABASE_MAX_CONNECTIONS",
                        "JWT_SECRET",
                        "JWT_ISSUER",
                        "JWT_AUDIENCE",
                        "JWT_JWKS_URL",
                        "JWT_TENANT_CLAIM",
                        "JWT_ROLES_CLAIM",
                        "JWT_SUBJECT_CLAIM",
                        "TLS_CERT",
                        "TLS_KEY",
                        "TLS_CLIENT_CA",
                        "NATS_URL",
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                        "OTEL_EXPORTER_OTLP_PROTOCOL",
                        "OTEL_SERVICE_NAME",
                    ])
                    .map(|key| match key.as_str() {
                        "RUST_LOG" => "log_filter".into(),
                        other => other.to_ascii_lowercase().into(),
                    }),
            )
            .merge(Env::prefixed("GATEWAY_").ignore(&["CONFIG"]).split("__"))
            .extract()
            .map_err(Box::new)
    }

    /// Refuses secrets that would let anyone in: an empty or short (under
    /// [`MIN_SECRET_BYTES`]) `GATEWAY_ADMIN_KEY` or `JWT_SECRET`. A set but empty variable is a
    /// mistake, never a way to turn a check off; unset them instead.
    pub fn check_secrets(&self) -> anyhow::Result<()> {
        for (name, secret) in [
            ("GATEWAY_ADMIN_KEY", &self.admin_key),
            ("JWT_SECRET", &self.jwt_secret),
        ] {
            if let Some(secret) = secret {
                let len = secret.expose_secret().len();
                if len < MIN_SECRET_BYTES {
                    anyhow::bail!(
                        "{name} is {len} bytes long; it must be at least {MIN_SECRET_BYTES} \
                         (generate one with `openssl rand -hex 32`), or unset"
                    );
                }
            }
        }
        Ok(())
    }

    /// The process's roles (`GATEWAY_ROLES`, `gateway serve --roles`); `run_projectors`
    /// false takes `projectors` away. Refuses an unknown role or none at all.
    pub fn process_roles(&self) -> anyhow::Result<ProcessRoles> {
        let mut roles = ProcessRoles::default();
        for role in self
            .roles
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            match role {
                "api" => roles.api = true,
                "projectors" => roles.projectors = true,
                "relay" => roles.relay = true,
                other => anyhow::bail!(
                    "unknown process role '{other}' (GATEWAY_ROLES, --roles): use api, projectors, relay"
                ),
            }
        }
        roles.projectors &= self.run_projectors;
        if !(roles.api || roles.projectors || roles.relay) {
            anyhow::bail!("a process needs at least one role (api, projectors, relay)");
        }
        Ok(roles)
    }

    /// The database URL in effect: the configured one, or the embedded SQLite file.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.expose_secret().is_empty() => url.expose_secret().to_string(),
            _ => format!("sqlite://{}", self.data_dir.join("gateway.db").display()),
        }
    }

    /// Whether the gateway runs on the embedded SQLite database.
    pub fn is_embedded(&self) -> bool {
        !self.database_url().starts_with("postgres")
    }

    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_hours * 3600)
    }

    pub fn idempotency_lock(&self) -> Duration {
        Duration::from_secs(self.idempotency_lock_secs.max(1))
    }

    /// The relay's settings, when `NATS_URL` is set.
    pub fn relay(&self) -> Option<workers::relay::RelaySettings> {
        let url = self.nats_url.as_ref().filter(|url| !url.is_empty())?;
        Some(workers::relay::RelaySettings {
            url: url.clone(),
            stream: self.nats_stream.clone(),
            subject_prefix: self.nats_subject_prefix.clone(),
            max_age: Duration::from_secs(self.nats_max_age_hours * 3600),
            duplicate_window: Duration::from_secs(self.nats_duplicate_window_secs),
            replicas: self.nats_replicas.max(1),
            batch_size: self.relay_batch_size.max(1),
            max_in_flight: self.relay_max_in_flight.max(1),
            poll_interval: Duration::from_millis(self.projector_poll_ms.max(10)),
        })
    }

    pub fn credential_cache(&self) -> Duration {
        Duration::from_millis(self.credential_cache_ms)
    }

    pub fn budget_wait(&self) -> Duration {
        Duration::from_millis(self.budget_wait_ms)
    }

    pub fn consistency_wait(&self) -> Duration {
        Duration::from_millis(self.consistency_wait_ms)
    }

    pub fn runner(&self) -> workers::RunnerSettings {
        workers::RunnerSettings {
            batch_size: self.projector_batch_size.max(1),
            poll_interval: Duration::from_millis(self.projector_poll_ms.max(10)),
            coalesce: Duration::from_millis(self.projector_coalesce_ms),
        }
    }

    pub fn pool(&self) -> eventlog::db::PoolSettings {
        eventlog::db::PoolSettings {
            max_connections: self.database_max_connections.max(2),
            acquire_timeout: Duration::from_millis(self.database_acquire_timeout_ms.max(1)),
        }
    }
}

/// Which adapter serves a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Simulated,
    Openai,
}

/// A price in US dollars as an exact decimal with at most six decimal places, written as a
/// string (`"0.002"`) or a number (`0.002`) in settings, held as micro-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "UsdInput", into = "String")]
pub struct Usd(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum UsdInput {
    Text(String),
    Number(f64),
}

impl TryFrom<UsdInput> for Usd {
    type Error = String;

    fn try_from(input: UsdInput) -> Result<Self, String> {
        let text = match input {
            UsdInput::Text(text) => text,
            // The shortest representation that reads back as the same number: `0.002`.
            UsdInput::Number(number) => format!("{number}"),
        };
        parse_usd_micros(&text).map(Usd)
    }
}

impl From<Usd> for String {
    fn from(usd: Usd) -> String {
        format!("{}.{:06}", usd.0 / 1_000_000, usd.0 % 1_000_000)
    }
}

/// `"0.002"` → 2000 micro-dollars. Refuses negative numbers, exponents and more than six
/// decimal places rather than rounding money silently.
pub fn parse_usd_micros(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > 6
    {
        return Err(format!(
            "'{text}' is not a dollar amount with at most six decimal places"
        ));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("'{text}' is too large"))?
    };
    let fraction: u64 = format!("{fraction:0<6}").parse().unwrap_or(0);
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// One provider's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderSettings {
    pub kind: ProviderKind,
    /// Price per 1,000 tokens (input and output alike), in dollars.
    pub usd_per_1k_tokens: Usd,
    /// Prices of particular models, overriding `usd_per_1k_tokens`.
    pub model_prices: BTreeMap<String, Usd>,
    /// The model used when an agent names none.
    pub default_model: String,
    /// `openai`: the server's base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// `openai`: the bearer token.
    #[serde(serialize_with = "serialize_secret_option")]
    pub api_key: Option<SecretString>,
    /// `simulated`: how the vendor behaves.
    pub simulation: Simulation,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Simulated,
            usd_per_1k_tokens: Usd(0),
            model_prices: BTreeMap::new(),
            default_model: "default".into(),
            base_url: None,
            api_key: None,
            simulation: Simulation::default(),
        }
    }
}

/// Seed 004's two vendors: `vendorA` at $0.002 and `vendorB` at $0.003 per 1k tokens.
pub fn default_providers() -> BTreeMap<String, ProviderSettings> {
    let vendor = |price: u64, model: &str| ProviderSettings {
        usd_per_1k_tokens: Usd(price),
        default_model: model.into(),
        ..ProviderSettings::default()
    };
    BTreeMap::from([
        ("vendorA".to_string(), vendor(2000, "vendor-a-1")),
        ("vendorB".to_string(), vendor(3000, "vendor-b-1")),
    ])
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn empty_or_short_secrets_are_refused_naming_the_setting() {
        let mut settings = Settings::default();
        assert!(settings.check_secrets().is_ok(), "unset secrets are fine");
        for (value, ok) in [
            ("", false),
            ("short", false),
            (&*"k".repeat(31), false),
            (&*"k".repeat(32), true),
        ] {
            settings.admin_key = Some(value.to_string().into());
            settings.jwt_secret = None;
            let admin = settings.check_secrets();
            assert_eq!(
                admin.is_ok(),
                ok,
                "GATEWAY_ADMIN_KEY of {} bytes",
                value.len()
            );
            if let Err(error) = admin {
                assert!(
                    error.to_string().starts_with("GATEWAY_ADMIN_KEY is"),
                    "{error}"
                );
            }
            settings.admin_key = None;
            settings.jwt_secret = Some(value.to_string().into());
            let jwt = settings.check_secrets();
            assert_eq!(jwt.is_ok(), ok, "JWT_SECRET of {} bytes", value.len());
            if let Err(error) = jwt {
                assert!(error.to_string().starts_with("JWT_SECRET is"), "{error}");
            }
        }
    }

    #[test]
    // figment's Jail decides the closure's error type.
    #[allow(clippy::result_large_err)]
    fn environment_variables_override_the_file_and_the_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("gateway.toml", "port = 9000\nrate_limit_per_minute = 10\n")?;
            jail.set_env("GATEWAY_CONFIG", "gateway.toml");
            jail.set_env("PORT", "9100");
            jail.set_env("JWT_SECRET", "s3cret");
            jail.set_env("JWT_AUDIENCE", "gateway");
            jail.set_env("GATEWAY_ADMIN_KEY", "admin");
            jail.set_env("GATEWAY_CONSISTENCY_WAIT_MS", "50");
            jail.set_env("RUST_LOG", "debug");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.port, 9100);
            assert_eq!(settings.rate_limit_per_minute, 10);
            assert_eq!(
                settings.jwt_secret.as_ref().unwrap().expose_secret(),
                "s3cret"
            );
            assert_eq!(settings.jwt_audience.as_deref(), Some("gateway"));
            assert_eq!(
                settings.admin_key.as_ref().unwrap().expose_secret(),
                "admin"
            );
            assert_eq!(settings.consistency_wait_ms, 50);
            assert_eq!(settings.log_filter, "debug");
            assert!(settings.is_embedded());
            Ok(())
        });
    }

    #[test]
    // figment's Jail decides the closure's error type.
    #[allow(clippy::result_large_err)]
    fn providers_come_from_the_file_and_nested_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gateway.toml",
                r#"
[providers.vendorA]
usd_per_1k_tokens = "0.0025"
model_prices = { "vendor-a-large" = 0.01 }

[providers.vendorA.simulation]
latency_ms = 150

[providers.openai]
kind = "openai"
base_url = "http://127.0.0.1:11434/v1"
usd_per_1k_tokens = 0.0006
default_model = "llama3"
"#,
            )?;
            jail.set_env("GATEWAY_CONFIG", "gateway.toml");
            jail.set_env("GATEWAY_PROVIDER_RETRY__ATTEMPT_TIMEOUT_MS", "750");
            jail.set_env("GATEWAY_PROVIDERS__OPENAI__API_KEY", "sk-local");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            let vendor_a = &settings.providers["vendorA"];
            assert_eq!(vendor_a.usd_per_1k_tokens, Usd(2500));
            assert_eq!(vendor_a.model_prices["vendor-a-large"], Usd(10_000));
            assert_eq!(vendor_a.simulation.latency_ms, 150);
            assert_eq!(vendor_a.default_model, "vendor-a-1", "defaults stay");
            assert_eq!(settings.providers["vendorB"].usd_per_1k_tokens, Usd(3000));
            let openai = &settings.providers["openai"];
            assert_eq!(openai.kind, ProviderKind::Openai);
            assert_eq!(openai.usd_per_1k_tokens, Usd(600));
            assert_eq!(openai.api_key.as_ref().unwrap().expose_secret(), "sk-local");
            assert_eq!(settings.provider_retry.attempt_timeout_ms, 750);
            assert_eq!(settings.provider_retry.max_retries, 2);
            Ok(())
        });
    }
}

/// What one gateway process does (see [`Settings::roles`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessRoles {
    pub api: bool,
    pub projectors: bool,
    pub relay: bool,
}

impl ProcessRoles {
    /// The roles' names, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.api, "api"),
            (self.projectors, "projectors"),
            (self.relay, "relay"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}
