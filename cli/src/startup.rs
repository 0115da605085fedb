//! Building and running the gateway. `main` and the black-box tests both go through
//! [`Application::build`], so the tests run the real thing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eventlog::EventLog;
use projections::progress::Progress;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use api::credentials::{CredentialCache, LastUsed};
use api::rate_limit::RateLimiter;
use api::routes;
use app::metrics::Metrics;
use app::settings::Settings;
use app::{App, SystemClock, bootstrap, open_log};

use api::state::AppState;

/// A gateway bound to its port, with its workers started, ready to serve.
pub struct Application {
    port: u16,
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    workers: Vec<JoinHandle<()>>,
    bootstrap_key: Option<String>,
    /// TLS on the listener, when `TLS_CERT` and `TLS_KEY` are set.
    tls: Option<api::server::TlsAcceptor>,
}

/// Most events the stream cache holds (a few tens of megabytes at most).
const STREAM_CACHE_EVENTS: usize = 5_000;

impl Application {
    /// Connects, migrates, starts the projectors (unless disabled) and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.check_secrets()?;
        // Refused before anything starts: a listener half configured for TLS, or files that
        // do not make a TLS configuration.
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(api::server::tls_acceptor(
                cert,
                key,
                settings.tls_client_ca.as_deref(),
            )?),
            (None, None) if settings.tls_client_ca.is_none() => None,
            _ => {
                anyhow::bail!("TLS needs both TLS_CERT and TLS_KEY (TLS_CLIENT_CA needs them too)")
            }
        };
        let providers =
            app::providers::from_settings(&settings).context("configuring the providers")?;
        let log = open_log(&settings).await?;
        // Record commands of concurrent requests share commits (see eventlog::group_commit).
        log.start_group_commit();
        // Every record write reads its entity type, every message its session, agent and
        // budgets; commands decide on them as this process last saw them, and their commits
        // check that nothing moved since (see eventlog::stream_cache).
        {
            use cqrs_es::Aggregate;
            log.cache_streams(
                &[
                    domain::entity_type::EntityType::TYPE,
                    domain::session::Session::TYPE,
                    domain::agent::Agent::TYPE,
                    domain::budget::Budget::TYPE,
                ],
                // Every message appends to its session: hand it out rather than copy it.
                &[domain::session::Session::TYPE],
                STREAM_CACHE_EVENTS,
            );
        }
        let projectors = Arc::new(projections::all());
        let progress = Progress::default();
        let shutdown = CancellationToken::new();
        let clock: domain::api_key::ApiKeyServices = Arc::new(SystemClock);
        if !settings.is_embedded() && settings.admin_key.is_none() {
            tracing::warn!(
                "GATEWAY_ADMIN_KEY is not set: platform routes need a platform key \
                 (gateway keys create --tenant platform --roles superadmin)"
            );
        }
        let bootstrap_key = if settings.is_embedded() && settings.admin_key.is_none() {
            bootstrap::ensure_platform_key(&log, &clock).await?
        } else {
            None
        };
        let roles = settings.process_roles()?;
        let mut workers = Vec::new();
        if roles.projectors {
            workers.extend(workers::start(
                &log,
                &projectors,
                &progress,
                &settings.runner(),
                &shutdown,
            ));
            workers.push(workers::indexer::spawn(
                log.db().clone(),
                Duration::from_secs(2),
                shutdown.clone(),
            ));
            workers.push(workers::reaper::spawn(
                log.clone(),
                settings.idempotency_retention(),
                Duration::from_secs(60),
                shutdown.clone(),
            ));
        }
        let relay_settings = settings.relay().filter(|_| roles.relay);
        let relay = relay_settings.map(|relay_settings| {
            let status = Arc::new(workers::relay::RelayStatus::default());
            workers.push(workers::relay::spawn(
                log.clone(),
                relay_settings,
                status.clone(),
                shutdown.clone(),
            ));
            status
        });
        let last_used = Arc::new(LastUsed::default());
        workers.push(spawn_last_used_flusher(
            log.clone(),
            last_used.clone(),
            shutdown.clone(),
        ));
        let listener = TcpListener::bind((settings.host.as_str(), settings.port))
            .await
            .with_context(|| format!("binding {}:{}", settings.host, settings.port))?;
        let port = listener.local_addr()?.port();
        tracing::info!(
            port,
            backend = log.db().backend().as_str(),
            roles = ?roles.names(),
            "gateway ready"
        );
        let credentials = Arc::new(CredentialCache::new(settings.credential_cache()));
        let jwks = api::auth::jwt::KeySet::from_settings(&settings).map(Arc::new);
        let state = AppState::new(api::state::Services {
            app: App {
                log,
                progress,
                metrics: {
                    let metrics = Metrics::default();
                    metrics.roles(&roles.names());
                    Arc::new(metrics)
                },
                settings: Arc::new(settings),
                projectors,
                clock,
                relay,
                providers,
                shutdown: shutdown.clone(),
                render_refusal: api::error::render_refusal,
            },
            rate_limiter: Arc::new(RateLimiter::default()),
            unknown_keys: Arc::new(RateLimiter::default()),
            jwks,
            last_used,
            credentials,
        });
        Ok(Self {
            port,
            listener,
            state,
            shutdown,
            workers,
            bootstrap_key,
            tls,
        })
    }

    /// The platform key generated on this first start of an embedded gateway, if this start
    /// generated one. Shown once; only its hash is stored.
    pub fn take_bootstrap_key(&mut self) -> Option<String> {
        self.bootstrap_key.take()
    }

    /// The port the gateway listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancelling this token stops the gateway gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled: then stops accepting connections, lets
    /// requests in flight finish and workers finish their batch (bounded by the grace
    /// period), and closes the database pools.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let settings = &self.state.settings;
        let grace = Duration::from_secs(settings.shutdown_grace_secs);
        let limits = api::server::Limits {
            header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(settings.idle_timeout_ms.max(1)),
            max_connections: settings.max_connections,
            grace,
        };
        // A process without the `api` role serves the operational routes only.
        let router = if settings.process_roles()?.api {
            routes::router(self.state.clone())
        } else {
            routes::operations_router(self.state.clone())
        };
        let token = self.shutdown.clone();
        let stopping = tokio::spawn(async move {
            token.cancelled().await;
            tracing::info!("shutting down: draining requests");
            tokio::time::Instant::now() + grace
        });
        api::server::serve(
            self.listener,
            router,
            limits,
            self.tls,
            self.shutdown.clone(),
        )
        .await;
        // The whole shutdown, requests and workers together, stays within the grace period.
        let deadline = stopping
            .await
            .unwrap_or_else(|_| tokio::time::Instant::now() + grace);
        let drain = futures_join_all(self.workers);
        if tokio::time::timeout_at(deadline, drain).await.is_err() {
            tracing::warn!(?grace, "workers did not stop within the grace period");
        }
        self.state.log.db().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Writes key last-use times every 5 seconds, and once more at shutdown.
fn spawn_last_used_flusher(
    log: EventLog,
    last_used: Arc<LastUsed>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => false,
                _ = shutdown.cancelled() => true,
            };
            if let Err(error) = last_used.flush(log.db()).await {
                tracing::warn!(%error, "recording key use failed");
            }
            if stop {
                return;
            }
        }
    })
}

async fn futures_join_all(handles: Vec<JoinHandle<()>>) {
    for handle in handles {
        if let Err(error) = handle.await {
            tracing::error!(%error, "worker task failed");
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
