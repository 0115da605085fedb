//! The `gateway` command line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use domain::api_key::{ApiKeyServices, PLATFORM_TENANT};
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use domain::roles::Role;
use secrecy::ExposeSecret;

use crate::auth::jwt;
use crate::bootstrap;
use crate::settings::Settings;
use crate::startup::{self, Application};
use crate::state::SystemClock;

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
    /// Tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// The NATS relay.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Consume the NATS stream as a downstream service would (durable pull consumer, each
    /// event applied once, double ack); prints each event's envelope as a JSON line.
    Subscribe {
        /// The durable consumer's name; it remembers its position across runs.
        #[arg(long)]
        durable: String,
        /// Subject filter, e.g. `gateway.acme.Entity.>`.
        #[arg(long)]
        filter: Option<String>,
        /// SQLite file of processed event ids (and the example's effects).
        #[arg(long, default_value = "./data/consumer.db")]
        state: PathBuf,
        /// Stop after this many events.
        #[arg(long)]
        max: Option<u64>,
        /// Stop when no event arrived for this many seconds.
        #[arg(long)]
        idle_secs: Option<u64>,
    },
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Demo and benchmark data.
    #[command(subcommand)]
    Seed(SeedCommand),
    /// Usage metering.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Print a signed service JWT (needs JWT_SECRET), for development and scripts.
    Token {
        /// The `service` claim.
        #[arg(long)]
        service: String,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// The `tenant` claim.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant and its first admin key; prints JSON with both.
    Create {
        #[arg(long)]
        name: String,
        /// The tenant id; generated (`tnt_…`) when absent.
        #[arg(long)]
        id: Option<String>,
        /// The tenant's request budget per key per minute.
        #[arg(long)]
        rate_limit_per_minute: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
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
}

#[derive(Debug, Subcommand)]
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

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Publish again every event after a cursor (`beginning` for all). JetStream drops the
    /// copies of events it stored within its duplicate window; older ones arrive twice.
    Replay {
        #[arg(long, value_name = "CURSOR|beginning")]
        from: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key to a tenant (`platform` with `--roles superadmin` for a platform key);
    /// prints JSON with the key, shown only here.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated roles: admin, writer, reader, analyst (or superadmin).
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        #[arg(long, default_value = "cli")]
        name: String,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Revoke a key (`--tenant platform` for a platform key); it stops working at once on
    /// this database and within GATEWAY_CREDENTIAL_CACHE_MS on running gateways.
    Revoke {
        #[arg(long)]
        tenant: String,
        /// The key's id (`key_…`, the part of the key before its last `_`).
        #[arg(long)]
        id: String,
    },
    /// Issue a new platform key (role `superadmin`) and revoke every other one, the key
    /// generated on first start included; prints the new key, shown only here.
    RotatePlatform {
        #[arg(long, default_value = "platform")]
        name: String,
    },
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

/// Runs the command line after settings are loaded and logging is set up. What a command
/// prints for its user goes to `out`.
pub async fn run(cli: Cli, settings: Settings, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
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
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "projector": projector.name(),
                        "events": report.events,
                        "seconds": seconds,
                        "eventsPerSecond": report.events as f64 / seconds.max(1e-9),
                        "checkpoint": report.cursor.to_string(),
                        "fillSeconds": report.fill.as_secs_f64(),
                        "indexSeconds": report.indexes.as_secs_f64(),
                        "swapSeconds": report.swap.as_secs_f64(),
                    })
                )?;
            }
            Ok(())
        }
        Command::Projections(ProjectionsCommand::Status) => {
            let log = startup::open_log(&settings).await?;
            for projector in projections::all() {
                let lag = projections::progress::lag(&log, projector.name()).await?;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "projector": projector.name(),
                        "checkpoint": lag.checkpoint.to_string(),
                        "lagEvents": lag.events,
                        "lagSeconds": lag.seconds,
                    })
                )?;
            }
            Ok(())
        }
        Command::Tenants(TenantsCommand::Create {
            name,
            id,
            rate_limit_per_minute,
        }) => {
            let log = startup::open_log(&settings).await?;
            let clock: ApiKeyServices = Arc::new(SystemClock);
            let id = match id {
                Some(id) => TenantId::parse(id)?,
                None => TenantId::parse(format!("tnt_{}", uuid::Uuid::now_v7().simple()))?,
            };
            let metadata = EventMetadata::new(id.clone(), "cli", "cli", "CreateTenant");
            let created = bootstrap::create_tenant(
                &log,
                &clock,
                id.clone(),
                name,
                rate_limit_per_minute,
                &metadata,
                None,
                |_, _| eventlog::idempotency::StoredResponse {
                    status: 201,
                    headers: Vec::new(),
                    body: Vec::new(),
                },
            )
            .await?;
            let until = created.appended.last_cursor().unwrap_or_default();
            bootstrap::catch_up(&log, &projections::all(), until).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "tenant": { "id": id.as_str(), "name": created.appended.events[0].payload["name"] },
                    "apiKey": { "id": created.key.id, "roles": ["admin"], "key": created.key.token },
                })
            )?;
            Ok(())
        }
        Command::Keys(KeysCommand::Create {
            tenant,
            roles,
            name,
            expires_at,
        }) => {
            let log = startup::open_log(&settings).await?;
            let clock: ApiKeyServices = Arc::new(SystemClock);
            let tenant = TenantId::parse(tenant)?;
            if tenant.as_str() != PLATFORM_TENANT {
                let stream = eventlog::StreamId::new(
                    tenant.clone(),
                    <domain::tenant::Tenant as cqrs_es::Aggregate>::TYPE,
                    tenant.as_str(),
                );
                if log.version(&stream).await? == 0 {
                    bail!("no tenant '{tenant}'");
                }
            }
            let roles = roles
                .iter()
                .map(|r| r.parse::<Role>())
                .collect::<Result<Vec<_>, _>>()?;
            let metadata = EventMetadata::new(tenant.clone(), "cli", "cli", "IssueApiKey");
            let (key, outcome) = bootstrap::issue_key(
                &log,
                &clock,
                &tenant,
                name,
                roles.clone(),
                expires_at,
                &metadata,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let until = outcome.cursor.unwrap_or_default();
            bootstrap::catch_up(&log, &projections::all(), until).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "tenant": tenant.as_str(),
                    "apiKey": { "id": key.id, "roles": roles, "key": key.token },
                })
            )?;
            Ok(())
        }
        Command::Keys(KeysCommand::Revoke { tenant, id }) => {
            let log = startup::open_log(&settings).await?;
            let clock: ApiKeyServices = Arc::new(SystemClock);
            let tenant = TenantId::parse(tenant)?;
            let stream = eventlog::StreamId::new(
                tenant.clone(),
                <domain::api_key::ApiKey as cqrs_es::Aggregate>::TYPE,
                id.as_str(),
            );
            if log.version(&stream).await? == 0 {
                bail!("no key '{id}' in tenant '{tenant}'");
            }
            let metadata = EventMetadata::new(tenant.clone(), "cli", "cli", "RevokeApiKey");
            let outcome = bootstrap::revoke_key(&log, &clock, &tenant, &id, &metadata)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(until) = outcome.cursor {
                bootstrap::catch_up(&log, &projections::all(), until).await?;
            }
            writeln!(
                out,
                "{}",
                serde_json::json!({ "tenant": tenant.as_str(), "apiKey": { "id": id, "revoked": true } })
            )?;
            Ok(())
        }
        Command::Keys(KeysCommand::RotatePlatform { name }) => {
            let log = startup::open_log(&settings).await?;
            let clock: ApiKeyServices = Arc::new(SystemClock);
            let (key, revoked, until) = bootstrap::rotate_platform_key(&log, &clock, name).await?;
            bootstrap::catch_up(&log, &projections::all(), until).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "apiKey": { "id": key.id, "roles": ["superadmin"], "key": key.token },
                    "revoked": revoked,
                })
            )?;
            Ok(())
        }
        Command::Seed(SeedCommand::Demo { tenant, name }) => {
            let summary = crate::seed::demo(settings, &tenant, &name).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
            Ok(())
        }
        Command::Seed(SeedCommand::Usage {
            count,
            tenant,
            days,
            agents,
        }) => {
            let bar = seed_bar(count)?;
            let report = crate::seed::usage(
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
        Command::Seed(SeedCommand::Entities {
            count,
            tenant,
            batch,
            concurrency,
        }) => {
            let bar = seed_bar(count)?;
            let report = crate::seed::entities(
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
        Command::Usage(UsageCommand::Verify { repair }) => {
            let log = startup::open_log(&settings).await?;
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
        Command::Relay(RelayCommand::Replay { from }) => {
            let log = startup::open_log(&settings).await?;
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
        Command::Subscribe {
            durable,
            filter,
            state,
            max,
            idle_secs,
        } => {
            let url = settings.nats_url.clone().context("NATS_URL is not set")?;
            if let Some(parent) = state.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let consumer = workers::consumer::ConsumerSettings {
                url,
                stream: settings.nats_stream.clone(),
                durable,
                filter_subject: filter,
                state,
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            let token = shutdown.clone();
            tokio::spawn(async move {
                startup::shutdown_signal().await;
                token.cancel();
            });
            let report = workers::consumer::run(
                &consumer,
                max,
                idle_secs.map(Duration::from_secs),
                out,
                shutdown,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(
                applied = report.applied,
                duplicates = report.skipped_duplicates,
                "consumer stopped"
            );
            Ok(())
        }
        Command::Token {
            service,
            roles,
            tenant,
            ttl,
        } => {
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
