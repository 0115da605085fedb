//! Starting the application and databases for tests.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use app::settings::Settings;
use cli::startup::Application;
use eventlog::{Db, EventLog};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;

/// Runs a test body once per backend: `both_backends!(name, body)` defines `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::helpers::Backend::Postgres).await
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists only for one test.
pub struct TestDb {
    pub url: String,
    backend: Backend,
    _dir: Option<TempDir>,
    /// Whether dropping this handle drops the database.
    owner: bool,
}

/// A folder removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn postgres_admin_url() -> String {
    crate::servers::postgres_url()
}

/// The PostgreSQL server of the tests, without a database: its URL is followed by
/// `/<database>`.
pub fn postgres_server_url() -> String {
    let admin = postgres_admin_url();
    admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(server, _)| server)
        .to_owned()
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let name = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).expect("temporary folder");
                let url = format!("sqlite://{}", dir.join("gateway.db").display());
                Self {
                    url,
                    backend,
                    _dir: Some(TempDir(dir)),
                    owner: true,
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL must be reachable at {admin} (GATEWAY_TEST_DATABASE_URL, or unset for a private server): {e}"
                    )
                });
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create the test database");
                Self {
                    url: format!("{}/{name}", postgres_server_url()),
                    backend,
                    _dir: None,
                    owner: true,
                }
            }
        }
    }

    /// Another handle on the same database, for a second application (like another process).
    /// The first handle stays the owner and must outlive this one.
    pub fn share(&self) -> Self {
        Self {
            url: self.url.clone(),
            backend: self.backend,
            _dir: None,
            owner: false,
        }
    }

    /// A migrated event log on this database, with its own pools (like another process).
    pub async fn log(&self) -> EventLog {
        self.log_with(Vec::new()).await
    }

    pub async fn log_with(
        &self,
        upcasters: Vec<Box<dyn cqrs_es::persist::EventUpcaster>>,
    ) -> EventLog {
        let db = Db::connect(&self.url, &Default::default())
            .await
            .expect("connect to the test database");
        db.migrate().await.expect("migrate the test database");
        EventLog::new(db, upcasters)
    }

    /// Settings of an application on this database, on a free port.
    pub fn settings(&self) -> Settings {
        Settings {
            host: "127.0.0.1".into(),
            port: 0,
            database_url: Some(self.url.clone().into()),
            consistency_wait_ms: 2_000,
            projector_poll_ms: 100,
            shutdown_grace_secs: 5,
            admin_key: Some(ADMIN_KEY.to_string().into()),
            jwt_secret: Some(JWT_SECRET.to_string().into()),
            jwt_issuer: Some(JWT_ISSUER.into()),
            jwt_audience: Some(JWT_AUDIENCE.into()),
            ..Settings::default()
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres || !self.owner {
            return;
        }
        // Best effort: CI also drops leftovers of crashed runs before testing.
        let url = self.url.clone();
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        let admin = postgres_admin_url();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}

/// The platform admin key of test applications.
pub const ADMIN_KEY: &str = "test-platform-admin-key-0123456789abcdef";
pub const JWT_SECRET: &str = "test-jwt-secret-that-is-long-enough";
pub const JWT_ISSUER: &str = "gateway-tests";
pub const JWT_AUDIENCE: &str = "gateway";
/// Tenants every test application starts with, each with an admin key.
pub const TENANTS: &[&str] = &["acme", "globex", "tenant-a", "tenant-b"];

/// A running application and a client for it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub db: TestDb,
    /// Admin API key of each of [`TENANTS`].
    pub keys: HashMap<String, String>,
    /// The application's providers, to change a simulated vendor's behaviour mid-test.
    pub providers: std::sync::Arc<app::providers::Providers>,
}

/// Schemaless entity types every test tenant has, for tests about something else than schemas.
pub const SCHEMALESS_TYPES: &[&str] = &[
    "users", "orders", "projects", "tasks", "invoices", "counters",
];

/// Creates `tenant` with an admin key through the same path as `gateway tenants create`,
/// defines the [`SCHEMALESS_TYPES`], and applies it all to the read models at once. Returns
/// the key.
pub async fn create_tenant(log: &EventLog, tenant: &str) -> String {
    let clock: domain::api_key::ApiKeyServices = std::sync::Arc::new(app::SystemClock);
    let id = domain::names::TenantId::parse(tenant).unwrap();
    let metadata =
        domain::metadata::EventMetadata::new(id.clone(), "test", "setup", "CreateTenant");
    let created = app::bootstrap::create_tenant(
        log,
        &clock,
        id.clone(),
        format!("{tenant} Inc."),
        None,
        &metadata,
        None,
        |_, _| eventlog::idempotency::StoredResponse {
            status: 201,
            headers: Vec::new(),
            body: Vec::new(),
        },
    )
    .await
    .expect("tenant created");
    let mut until = created.appended.last_cursor().unwrap();
    for name in SCHEMALESS_TYPES {
        let name = domain::names::EntityTypeName::parse(*name).unwrap();
        let stream = app::entity_writes::type_stream(&id, &name);
        let command = domain::entity_type::EntityTypeCommand::DefineEntityType {
            name,
            schema: domain::entity_type::Schema::open(),
            missing_references: Vec::new(),
        };
        let outcome = log
            .execute::<domain::entity_type::EntityType>(&stream, command, &(), &metadata)
            .await
            .expect("entity type defined");
        until = outcome.cursor.unwrap();
    }
    app::bootstrap::catch_up(log, &projections::all(), until)
        .await
        .expect("read models caught up");
    created.key.token
}

/// Defines each of `types` (`POST /v1/entity-types` bodies) for `tenant`, expecting 201.
pub async fn define_types(app: &TestApp, tenant: &str, types: &[Value]) {
    for body in types {
        let response = app
            .request(reqwest::Method::POST, "/v1/entity-types", tenant)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }
}

/// Starts the application on a fresh database of `backend`.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the application with adjusted settings.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut app = spawn_app_on(db, adjust).await;
    let log = app.db.log().await;
    for tenant in TENANTS {
        app.keys
            .insert(tenant.to_string(), create_tenant(&log, tenant).await);
    }
    log.db().close().await;
    app
}

/// Starts the application on an existing test database (without creating tenants).
pub async fn spawn_app_on(db: TestDb, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = db.settings();
    adjust(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("the application starts");
    let keys = HashMap::new();
    let providers = app.state().providers.clone();
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        shutdown,
        server,
        db,
        keys,
        providers,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `GET` of a public route (`/ready`, `/openapi.json`, …) as JSON.
    pub async fn public_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON body")
    }

    /// A request with the admin key of `tenant` (one of [`TENANTS`]).
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        tenant: &str,
    ) -> reqwest::RequestBuilder {
        let key = self
            .keys
            .get(tenant)
            .unwrap_or_else(|| panic!("no test tenant '{tenant}'"));
        self.with_key(method, path, key)
    }

    /// A request with API key `key`.
    pub fn with_key(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("x-api-key", key)
    }

    /// A request with the platform admin key.
    pub fn as_admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.with_key(method, path, ADMIN_KEY)
    }

    /// `POST /v1/{entity}` and the response.
    pub async fn create(&self, tenant: &str, entity: &str, body: Value) -> reqwest::Response {
        self.request(reqwest::Method::POST, &format!("/v1/{entity}"), tenant)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The error code of an error response.
pub async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("an error body is JSON");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string();
    assert!(
        body["error"]["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "no request id in {body}"
    );
    (status, code)
}

/// The `details.resource` of a `404 RESOURCE_NOT_FOUND` answer (`agent`, `entity`, …).
pub async fn not_found(response: reqwest::Response) -> String {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("an error body is JSON");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("RESOURCE_NOT_FOUND")),
        "{body}"
    );
    body["error"]["details"]["resource"]
        .as_str()
        .unwrap_or_else(|| panic!("no details.resource in {body}"))
        .to_string()
}

/// A gateway in a runtime of its own, which the test can kill abruptly (as `kill -9` would:
/// no graceful shutdown, tasks dropped mid-flight, connections closed).
pub struct Process {
    runtime: Option<tokio::runtime::Runtime>,
    /// The port it listens on.
    pub port: u16,
}

impl Process {
    pub fn start(settings: Settings) -> Self {
        let (runtime, port) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let port = runtime.block_on(async move {
                let app = cli::startup::Application::build(settings).await.unwrap();
                let port = app.port();
                tokio::spawn(app.run_until_stopped());
                port
            });
            (runtime, port)
        })
        .join()
        .unwrap();
        Self {
            runtime: Some(runtime),
            port,
        }
    }

    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Short waits so that retries and timeouts take milliseconds.
pub fn quick(settings: &mut Settings) {
    settings.provider_retry.backoff_base_ms = 5;
    settings.provider_retry.jitter_ms = 0;
    settings.provider_retry.attempt_timeout_ms = 300;
}

pub async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

/// `POST /v1/agents`; returns the new agent's id.
pub async fn create_agent(app: &TestApp, tenant: &str, body: Value) -> String {
    let response = app
        .request(Method::POST, "/v1/agents", tenant)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    json_of(response).await["agent"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `POST /v1/sessions` for `agent_id`; returns the session id.
pub async fn create_session(app: &TestApp, tenant: &str, agent_id: &str) -> String {
    let response = app
        .request(Method::POST, "/v1/sessions", tenant)
        .json(&json!({"agentId": agent_id, "customerId": "customer_123", "metadata": {"channel": "chat"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    json_of(response).await["session"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `POST /v1/sessions/{session}/messages` with an `Idempotency-Key`.
pub async fn send(
    app: &TestApp,
    tenant: &str,
    session: &str,
    key: &str,
    content: &str,
) -> reqwest::Response {
    app.request(
        Method::POST,
        &format!("/v1/sessions/{session}/messages"),
        tenant,
    )
    .header("idempotency-key", key)
    .json(&json!({"role": "user", "content": content}))
    .send()
    .await
    .unwrap()
}
