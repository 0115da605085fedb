//! `gateway-bench`: drives the gateway's HTTP API with C concurrent connections for N
//! requests or T seconds, and prints throughput, latency percentiles, errors, the projection
//! lag at the end, and, when it started the server itself, the server's idle and peak RSS and
//! what the measured requests cost it: CPU time (user and kernel) and context switches per
//! request, and with `--syscalls` system calls per request (counted by `perf stat`).
//!
//! Only loopback targets are meant: the load is bounded by `--requests` or `--duration`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// `POST /v1/bench-items`, each with a fresh `Idempotency-Key`.
    CreateEntities,
    /// `POST /v1/sessions/{id}/messages` to an agent on the simulated `vendorA` (0 ms), each
    /// with a fresh `Idempotency-Key`; each client starts a new session every
    /// [`MESSAGES_PER_SESSION`] messages (session creation is not timed).
    SendMessages,
    /// Fill the log of `--database-url` up to `--events` events, then time the NATS relay
    /// publishing all of them to a fresh JetStream stream (no HTTP).
    RelayDrain,
    /// Create entities over HTTP (with `--spawn` and `--nats-url`) and time, per event, from
    /// the command's response to the event's arrival at a NATS subscriber.
    CommitToSubscriber,
    /// Time the analyst queries of `/v1/usage/*` against a gateway holding usage (see
    /// `gateway seed usage`), one at a time: `--requests` of each, with `--api-key`.
    UsageQueries,
    /// Time filtered lists of `/v1/items` against a gateway holding `gateway seed entities`,
    /// one at a time: `--requests` of each, with `--api-key`.
    EntityQueries,
    /// Time one-hop filters and relation pages against a gateway holding `gateway seed
    /// relations`, one at a time: `--requests` of each, with `--api-key`.
    RelationQueries,
}

#[derive(Debug, Parser)]
#[command(name = "gateway-bench", version)]
struct Args {
    /// Base URL of a running gateway (ignored with --spawn); several, comma-separated, share
    /// the clients round-robin (API processes of one database).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Start this gateway binary on a free port, measure its RSS, stop it at the end.
    #[arg(long, value_name = "GATEWAY_BINARY")]
    spawn: Option<PathBuf>,
    /// DATABASE_URL for the spawned gateway; unset means a fresh SQLite folder.
    #[arg(long)]
    database_url: Option<String>,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Total requests (the default when neither this nor --duration is given: 10000).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Run for this many seconds instead of a request count.
    #[arg(long, short = 'd')]
    duration: Option<f64>,
    #[arg(long, value_enum, default_value = "create-entities")]
    workload: Workload,
    /// Requests sent (and discarded) before measuring.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// `X-API-Key` of the requests when the gateway is not spawned by the bench (a spawned one
    /// gets a tenant and key of its own).
    #[arg(long)]
    api_key: Option<String>,
    /// NATS of the relay workloads.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Log size of `relay-drain`.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Count the spawned server's system calls and context switches over the measured
    /// requests with `perf stat` (Linux `perf`, allowed to attach to the process).
    #[arg(long, requires = "spawn")]
    syscalls: bool,
}

struct Server {
    child: Child,
    pid: u32,
    _data: Option<TempDir>,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident set size of `pid` in bytes: (current, peak).
fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What a process has cost so far, from `/proc`: CPU time and context switches of its live
/// threads (a thread that has exited takes its switches with it; `perf stat` counts them).
#[derive(Debug, Clone, Copy, Default)]
struct ProcessCost {
    user_seconds: f64,
    system_seconds: f64,
    voluntary_switches: u64,
    involuntary_switches: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux the bench
/// runs on).
const USER_HZ: f64 = 100.0;

fn process_cost(pid: u32) -> Option<ProcessCost> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    let mut cost = ProcessCost {
        user_seconds: ticks(14)? / USER_HZ,
        system_seconds: ticks(15)? / USER_HZ,
        ..ProcessCost::default()
    };
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let value = value.parse::<u64>().unwrap_or(0);
            match name {
                "voluntary_ctxt_switches:" => cost.voluntary_switches += value,
                "nonvoluntary_ctxt_switches:" => cost.involuntary_switches += value,
                _ => {}
            }
        }
    }
    Some(cost)
}

/// `perf stat` attached to the server for the measured requests.
struct SyscallCounter {
    child: Child,
}

impl SyscallCounter {
    async fn attach(pid: u32) -> anyhow::Result<Self> {
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter,context-switches",
            ])
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting perf stat (is perf installed?)")?;
        // perf prints nothing until it stops; give it a moment to attach to every thread.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self { child })
    }

    /// Stops perf (SIGINT makes it print its counts); returns (system calls, context switches).
    async fn finish(self) -> anyhow::Result<(u64, u64)> {
        let pid = self.child.id().context("perf stat exited early")?;
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .context("signalling perf")?;
        let output = self.child.wait_with_output().await?;
        let text = String::from_utf8_lossy(&output.stderr);
        let count = |event: &str| {
            text.lines()
                .find(|line| line.contains(event))
                .and_then(|line| line.split(',').next())
                .and_then(|n| n.trim().parse::<u64>().ok())
                .with_context(|| format!("no {event} count in perf's output: {text}"))
        };
        Ok((count("raw_syscalls:sys_enter")?, count("context-switches")?))
    }
}

/// The environment of a spawned gateway (and of its CLI).
fn gateway_command(binary: &PathBuf, env: &[(String, String)]) -> Command {
    let mut command = Command::new(binary);
    command
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL")
        .env("RUST_LOG", "warn")
        .env("GATEWAY_LOG_FORMAT", "json")
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Starts the gateway; returns it, its URL and an admin key of a tenant of its own.
async fn spawn_server(
    binary: &PathBuf,
    database_url: Option<&str>,
    extra_env: &[(String, String)],
) -> anyhow::Result<(Server, String, String)> {
    let port = free_port()?;
    let mut env: Vec<(String, String)> = extra_env.to_vec();
    let data = match database_url {
        Some(url) => {
            env.push(("DATABASE_URL".into(), url.into()));
            None
        }
        None => {
            let dir = std::env::temp_dir().join(format!("gateway-bench-{}", uuid::Uuid::new_v4()));
            env.push(("GATEWAY_DATA_DIR".into(), dir.display().to_string()));
            Some(TempDir(dir))
        }
    };
    let tenant = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let created = gateway_command(binary, &env)
        .args(["tenants", "create", "--name", "bench", "--id", &tenant])
        .args(["--rate-limit-per-minute", "1000000000"])
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("creating the bench tenant")?;
    if !created.status.success() {
        bail!("gateway tenants create failed");
    }
    let created: Value = serde_json::from_slice(&created.stdout).context("tenant JSON")?;
    let key = created["apiKey"]["key"]
        .as_str()
        .context("no key in the tenant JSON")?
        .to_string();
    let mut command = gateway_command(binary, &env);
    command
        .arg("serve")
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("the server exited at once")?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(format!("{url}/health")).send().await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server did not answer /health within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The workloads write to a schemaless type.
    let defined = client
        .post(format!("{url}/v1/entity-types"))
        .header("x-api-key", &key)
        .json(&json!({"name": "bench-items", "schemaless": true}))
        .send()
        .await?;
    if !defined.status().is_success() {
        bail!("defining bench-items: {}", defined.text().await?);
    }
    Ok((
        Server {
            child,
            pid,
            _data: data,
        },
        url,
        key,
    ))
}

/// Messages a `send-messages` client sends in one session before it opens the next.
const MESSAGES_PER_SESSION: u32 = 20;

/// Creates an agent on the simulated `vendorA`; returns its id.
async fn create_agent(client: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<String> {
    let response = client
        .post(format!("{url}/v1/agents"))
        .header("x-api-key", key)
        .json(&json!({"name": "bench agent", "primaryProvider": "vendorA"}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("creating the bench agent: {}", response.text().await?);
    }
    let body: Value = response.json().await?;
    body["agent"]["id"]
        .as_str()
        .map(str::to_string)
        .context("no id in the created agent")
}

/// Opens a session with `agent`; returns its id.
async fn create_session(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    agent: &str,
) -> Option<String> {
    let body: Value = client
        .post(format!("{url}/v1/sessions"))
        .header("x-api-key", key)
        .json(&json!({"agentId": agent}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["session"]["id"].as_str().map(str::to_string)
}

fn message(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    session: &str,
    n: u64,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{url}/v1/sessions/{session}/messages"))
        .header("x-api-key", key)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"role": "user", "content": format!("question {n}: how do I reset my password?")}))
}

fn request(client: &reqwest::Client, url: &str, key: &str, n: u64) -> reqwest::RequestBuilder {
    client
        .post(format!("{url}/v1/bench-items"))
        .header("x-api-key", key)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({
            "n": n,
            "name": format!("item {n}"),
            "tags": ["bench", "load"],
            "payload": "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor",
        }))
}

struct Outcome {
    latencies: Vec<Duration>,
    errors: u64,
    /// Record id and the instant its create's response arrived, for `commit-to-subscriber`.
    committed: Vec<(String, Instant)>,
}

async fn run_load(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    args: &Args,
    agent: Option<&str>,
    total: Option<u64>,
    until: Option<Instant>,
) -> Outcome {
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let urls: Vec<&str> = url.split(',').map(str::trim).collect();
    for client_number in 0..args.concurrency {
        let client = client.clone();
        let url = urls[client_number % urls.len()].to_string();
        let key = key.to_string();
        let issued = issued.clone();
        let agent = agent.map(str::to_string);
        // Only the latency workload needs each record's id; parsing every body would slow
        // the load generator in the others.
        let track_commits = args.workload == Workload::CommitToSubscriber;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut committed = Vec::new();
            let mut errors = 0u64;
            // send-messages: the client's session and how many messages it has had.
            let mut session: Option<(String, u32)> = None;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|total| n >= total)
                    || until.is_some_and(|t| Instant::now() >= t)
                {
                    break;
                }
                let builder = match &agent {
                    Some(agent) => {
                        if session
                            .as_ref()
                            .is_none_or(|(_, sent)| *sent >= MESSAGES_PER_SESSION)
                        {
                            session = create_session(&client, &url, &key, agent)
                                .await
                                .map(|id| (id, 0));
                        }
                        let Some((id, sent)) = session.as_mut() else {
                            errors += 1;
                            continue;
                        };
                        *sent += 1;
                        message(&client, &url, &key, id, n)
                    }
                    None => request(&client, &url, &key, n),
                };
                let started = Instant::now();
                let ok = match builder.send().await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        if track_commits {
                            let body: Value = response.json().await.unwrap_or(Value::Null);
                            if let Some(id) = body["id"].as_str() {
                                committed.push((format!("bench-items/{id}"), Instant::now()));
                            }
                        } else {
                            let _ = response.bytes().await;
                        }
                        ok
                    }
                    Err(_) => false,
                };
                latencies.push(started.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors, committed)
        }));
    }
    let mut outcome = Outcome {
        latencies: Vec::new(),
        errors: 0,
        committed: Vec::new(),
    };
    for task in tasks {
        if let Ok((latencies, errors, committed)) = task.await {
            outcome.latencies.extend(latencies);
            outcome.errors += errors;
            outcome.committed.extend(committed);
        }
    }
    outcome
}

/// `usage-queries`: p50/p99 of each analyst query, sent one at a time.
async fn usage_queries(args: &Args) -> anyhow::Result<()> {
    let key = args
        .api_key
        .clone()
        .context("usage-queries needs --api-key (printed by `gateway seed usage`)")?;
    let client = reqwest::Client::new();
    let today = chrono::Utc::now().date_naive();
    let tomorrow = today + chrono::Duration::days(1);
    let day = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let instant = |d: chrono::NaiveDate| format!("{}T00:00:00Z", day(d));
    let queries = [
        (
            "rollup, 30 days",
            format!(
                "/v1/usage/rollup?from={}&to={}",
                day(today - chrono::Duration::days(29)),
                day(today)
            ),
        ),
        (
            "rollup, 365 days",
            format!(
                "/v1/usage/rollup?from={}&to={}",
                day(today - chrono::Duration::days(364)),
                day(today)
            ),
        ),
        (
            "query DAY by provider,agentId, 30 days",
            format!(
                "/v1/usage/query?from={}&to={}&windowSize=DAY&groupBy=provider,agentId",
                instant(tomorrow - chrono::Duration::days(30)),
                instant(tomorrow)
            ),
        ),
        (
            "query DAY by provider,agentId, 365 days",
            format!(
                "/v1/usage/query?from={}&to={}&windowSize=DAY&groupBy=provider,agentId",
                instant(tomorrow - chrono::Duration::days(365)),
                instant(tomorrow)
            ),
        ),
    ];
    let count = args.requests.unwrap_or(200);
    let mut results = Vec::new();
    for (name, path) in &queries {
        let url = format!("{}{path}", args.url);
        for _ in 0..args.warmup.min(20) {
            client
                .get(&url)
                .header("x-api-key", &key)
                .send()
                .await?
                .bytes()
                .await?;
        }
        let mut latencies = Vec::with_capacity(count as usize);
        let mut body = Value::Null;
        for _ in 0..count {
            let started = Instant::now();
            let response = client.get(&url).header("x-api-key", &key).send().await?;
            if !response.status().is_success() {
                bail!("{name}: {} {}", response.status(), response.text().await?);
            }
            body = response.json().await?;
            latencies.push(started.elapsed());
        }
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        results.push(json!({
            "query": name,
            "requests": count,
            "p50Ms": at(0.50).as_secs_f64() * 1000.0,
            "p99Ms": at(0.99).as_secs_f64() * 1000.0,
            "messages": body["totals"]["messages"].as_i64()
                .or_else(|| body["data"].as_array().map(|d| d.iter().filter_map(|w| w["messages"].as_i64()).sum())),
        }));
    }
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

/// A timed query: its name, its path, and its query parameters.
type NamedQuery<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

/// `entity-queries`: filtered, indexed lists over the records of `gateway seed entities`.
async fn entity_queries(args: &Args) -> anyhow::Result<()> {
    let queries = [
        ("category = c07, limit 50", r#"{"category":"c07"}"#, ""),
        (
            "category = c07 and price >= 9000, by price desc, limit 50",
            r#"{"category":"c07","price":{"gte":9000}}"#,
            "price:desc",
        ),
        (
            "price between 5000 and 5010, limit 50",
            r#"{"price":{"gte":5000,"lte":5010}}"#,
            "",
        ),
        (
            "name startsWith item-00042, limit 50",
            r#"{"name":{"startsWith":"item-00042"}}"#,
            "",
        ),
    ];
    let queries: Vec<NamedQuery> = queries
        .iter()
        .map(|(name, filter, order)| {
            let mut query = vec![("where", *filter), ("limit", "50")];
            if !order.is_empty() {
                query.push(("orderBy", *order));
            }
            (*name, "/v1/items".to_string(), query)
        })
        .collect();
    timed_queries(args, "gateway seed entities", &queries).await
}

/// `relation-queries`: one-hop filters and relation pages over `gateway seed relations`.
async fn relation_queries(args: &Args) -> anyhow::Result<()> {
    let limit = ("limit", "50");
    let queries: Vec<NamedQuery> = vec![
        (
            "projects whose owner's country is DE (reference), limit 50",
            "/v1/projects".into(),
            vec![("where", r#"{"owner":{"country":"DE"}}"#), limit],
        ),
        (
            "projects with a member in DE (relation), limit 50",
            "/v1/projects".into(),
            vec![("where", r#"{"members":{"country":"DE"}}"#), limit],
        ),
        (
            "archived projects with a member in JP, limit 50",
            "/v1/projects".into(),
            vec![
                (
                    "where",
                    r#"{"status":"archived","members":{"country":"JP"}}"#,
                ),
                limit,
            ],
        ),
        (
            "resources of kind model used by a user in SE, limit 50",
            "/v1/resources".into(),
            vec![
                ("where", r#"{"kind":"model","users":{"country":"SE"}}"#),
                limit,
            ],
        ),
        (
            "a project's members (outgoing page)",
            "/v1/projects/project-0123456/relations/members".into(),
            vec![limit],
        ),
        (
            "a user's projects (incoming page)",
            "/v1/users/user-0123456/incoming/projects/members".into(),
            vec![limit],
        ),
    ];
    timed_queries(args, "gateway seed relations", &queries).await
}

/// Times `--requests` GETs of each query, one at a time, and prints their latencies.
async fn timed_queries(args: &Args, seed: &str, queries: &[NamedQuery<'_>]) -> anyhow::Result<()> {
    let key = args
        .api_key
        .clone()
        .with_context(|| format!("this workload needs --api-key (printed by `{seed}`)"))?;
    let client = reqwest::Client::new();
    let count = args.requests.unwrap_or(200);
    let mut results = Vec::new();
    for (name, path, query) in queries {
        let url = format!("{}{path}", args.url);
        let send = || {
            client
                .get(&url)
                .query(query)
                .header("x-api-key", &key)
                .send()
        };
        for _ in 0..args.warmup.min(20) {
            send().await?.bytes().await?;
        }
        let mut latencies = Vec::with_capacity(count as usize);
        let mut items = 0;
        for _ in 0..count {
            let started = Instant::now();
            let response = send().await?;
            if !response.status().is_success() {
                bail!("{name}: {} {}", response.status(), response.text().await?);
            }
            let body: Value = response.json().await?;
            latencies.push(started.elapsed());
            items = body["items"].as_array().map_or(0, Vec::len);
        }
        latencies.sort();
        results.push(json!({
            "query": name,
            "requests": count,
            "items": items,
            "p50Ms": percentile(&latencies, 0.50),
            "p99Ms": percentile(&latencies, 0.99),
        }));
    }
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

/// `relay-drain`: fills the log, then publishes it all through the relay's batch function.
async fn relay_drain(args: &Args) -> anyhow::Result<()> {
    let url = args
        .database_url
        .clone()
        .context("relay-drain needs --database-url")?;
    let db = eventlog::Db::connect(&url, &Default::default()).await?;
    db.migrate().await?;
    let log = eventlog::EventLog::new(db, Vec::new());
    let (existing, _) = log.backlog(eventlog::Cursor::START).await?;
    let tenant = domain::names::TenantId::parse("bench").expect("a valid tenant");
    let filling = Instant::now();
    let mut written = existing;
    while written < args.events {
        let n = (args.events - written).min(1000) as usize;
        let batch: Vec<eventlog::StreamAppend> = (0..n)
            .map(|i| eventlog::StreamAppend {
                stream: eventlog::StreamId::new(tenant.clone(), "Backlog", format!("b{written}-{i}")),
                expected_version: 0,
                events: vec![eventlog::NewEvent {
                    event_id: uuid::Uuid::now_v7(),
                    event_type: "BacklogFilled".into(),
                    event_version: "1.0".into(),
                    payload: json!({ "n": written + i as u64, "text": "lorem ipsum dolor sit amet consectetur" }).into(),
                    recorded_at: None,
                }],
                metadata: domain::metadata::EventMetadata::new(tenant.clone(), "bench", "bench", "FillBacklog"),
            })
            .collect();
        log.append(&batch).await?;
        written += n as u64;
        if written % 100_000 < 1000 {
            eprintln!("filled {written} events");
        }
    }
    eprintln!(
        "log holds {written} events ({:.1} s to fill)",
        filling.elapsed().as_secs_f64()
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let settings = workers::relay::RelaySettings {
        url: args.nats_url.clone(),
        stream: format!("BENCH_{}", id.to_uppercase()),
        subject_prefix: format!("bench{id}"),
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(120),
        replicas: 1,
        batch_size: 500,
        max_in_flight: 256,
        poll_interval: Duration::from_millis(100),
    };
    let client = async_nats::connect(settings.url.as_str()).await?;
    let jetstream = async_nats::jetstream::new(client);
    workers::relay::ensure_stream(&jetstream, &settings)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    projections::checkpoints::ensure(log.db(), workers::relay::CHECKPOINT).await?;
    workers::relay::replay_from(&log, eventlog::Cursor::START).await?;
    let started = Instant::now();
    let mut published = 0u64;
    while let workers::relay::RelayOutcome::Published { events, .. } =
        workers::relay::run_batch(&log, &jetstream, &settings)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        published += events as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = jetstream.delete_stream(&settings.stream).await;
    let report = json!({
        "workload": "RelayDrain",
        "events": published,
        "seconds": seconds,
        "eventsPerSecond": published as f64 / seconds,
        "batchSize": settings.batch_size,
        "maxInFlight": settings.max_in_flight,
    });
    println!(
        "RelayDrain events={published} {:.1}s {:.0} events/s",
        seconds,
        published as f64 / seconds
    );
    println!("{report}");
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.workload == Workload::UsageQueries {
        return usage_queries(&args).await;
    }
    if args.workload == Workload::EntityQueries {
        return entity_queries(&args).await;
    }
    if args.workload == Workload::RelationQueries {
        return relation_queries(&args).await;
    }
    if args.workload == Workload::RelayDrain {
        return relay_drain(&args).await;
    }
    let subscription_prefix = format!("benchlat{}", uuid::Uuid::new_v4().simple());
    let mut extra_env = Vec::new();
    if args.workload == Workload::CommitToSubscriber {
        extra_env.push(("NATS_URL".to_string(), args.nats_url.clone()));
        extra_env.push((
            "GATEWAY_NATS_STREAM".to_string(),
            subscription_prefix.to_uppercase(),
        ));
        extra_env.push((
            "GATEWAY_NATS_SUBJECT_PREFIX".to_string(),
            subscription_prefix.clone(),
        ));
        extra_env.push(("GATEWAY_PROJECTOR_POLL_MS".to_string(), "50".to_string()));
    }
    let (server, url, key) = match &args.spawn {
        Some(binary) => {
            let (server, url, key) =
                spawn_server(binary, args.database_url.as_deref(), &extra_env).await?;
            (Some(server), url, key)
        }
        None => (
            None,
            args.url.trim_end_matches('/').to_string(),
            args.api_key
                .clone()
                .context("--api-key is needed without --spawn")?,
        ),
    };
    let arrivals: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> =
        Arc::default();
    let subscriber = if args.workload == Workload::CommitToSubscriber {
        let client = async_nats::connect(args.nats_url.as_str()).await?;
        let mut subscription = client.subscribe(format!("{subscription_prefix}.>")).await?;
        let arrivals = arrivals.clone();
        Some(tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(message) = subscription.next().await {
                let now = Instant::now();
                if let Some(id) = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Gateway-Aggregate-Id"))
                {
                    arrivals
                        .lock()
                        .expect("arrivals lock")
                        .insert(id.as_str().to_string(), now);
                }
            }
        }))
    } else {
        None
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let idle_rss = server.as_ref().and_then(|s| rss(s.pid)).map(|(now, _)| now);

    let agent = match args.workload {
        Workload::SendMessages => Some(create_agent(&client, &url, &key).await?),
        _ => None,
    };
    if args.warmup > 0 {
        run_load(
            &client,
            &url,
            &key,
            &args,
            agent.as_deref(),
            Some(args.warmup),
            None,
        )
        .await;
    }
    if args.workload == Workload::CommitToSubscriber {
        // Measure the steady state: the relay connected and caught up with the warm-up.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready: Value = client
                .get(format!("{url}/ready"))
                .send()
                .await?
                .json()
                .await
                .unwrap_or(Value::Null);
            if ready["relay"]["status"] == "ok" && ready["relay"]["lagEvents"] == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the relay did not catch up within 60 s: {ready}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let peak_sampler = server.as_ref().map(|s| {
        let pid = s.pid;
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                match rss(pid) {
                    Some((now, _)) => peak = peak.max(now),
                    None => return peak,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });

    let (total, until) = match (args.requests, args.duration) {
        (_, Some(seconds)) => (
            None,
            Some(Instant::now() + Duration::from_secs_f64(seconds)),
        ),
        (Some(n), None) => (Some(n), None),
        (None, None) => (Some(10_000), None),
    };
    let counter = match (&server, args.syscalls) {
        (Some(server), true) => Some(SyscallCounter::attach(server.pid).await?),
        _ => None,
    };
    let cost_before = server.as_ref().and_then(|s| process_cost(s.pid));
    let started = Instant::now();
    let mut outcome = run_load(&client, &url, &key, &args, agent.as_deref(), total, until).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cost_after = server.as_ref().and_then(|s| process_cost(s.pid));
    let kernel_counts = match counter {
        Some(counter) => Some(counter.finish().await?),
        None => None,
    };
    let mut delivery = Vec::new();
    if let Some(subscriber) = subscriber {
        // Wait (bounded) for the last events to arrive, then match them to their commits.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let all_arrived = {
                let arrived = arrivals.lock().expect("arrivals lock");
                outcome
                    .committed
                    .iter()
                    .all(|(id, _)| arrived.contains_key(id))
            };
            if all_arrived {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        subscriber.abort();
        let arrivals = arrivals.lock().expect("arrivals lock");
        for (id, committed) in &outcome.committed {
            if let Some(arrived) = arrivals.get(id) {
                delivery.push(arrived.saturating_duration_since(*committed));
            }
        }
        delivery.sort();
    }

    // The first gateway's view (several URLs are processes of one database).
    let first = url.split(',').next().unwrap_or(&url);
    let ready: Value = client
        .get(format!("{first}/ready"))
        .send()
        .await
        .context("GET /ready")?
        .json()
        .await
        .unwrap_or(Value::Null);
    let lag = ready["projectors"].clone();

    let peak_rss = match (server.as_ref(), peak_sampler) {
        (Some(server), Some(sampler)) => {
            let hwm = rss(server.pid).map(|(_, hwm)| hwm);
            sampler.abort();
            hwm
        }
        _ => None,
    };
    if let Some(mut server) = server {
        let _ = server.child.start_kill();
        let _ = server.child.wait().await;
    }

    outcome.latencies.sort();
    let count = outcome.latencies.len();
    let per_request = |n: f64| n / count.max(1) as f64;
    let server_cost = cost_before.zip(cost_after).map(|(before, after)| {
        json!({
            "userCpuUs": per_request((after.user_seconds - before.user_seconds) * 1e6),
            "systemCpuUs": per_request((after.system_seconds - before.system_seconds) * 1e6),
            "voluntarySwitches": per_request(after.voluntary_switches.saturating_sub(before.voluntary_switches) as f64),
            "involuntarySwitches": per_request(after.involuntary_switches.saturating_sub(before.involuntary_switches) as f64),
            "syscalls": kernel_counts.map(|(calls, _)| per_request(calls as f64)),
            "contextSwitches": kernel_counts.map(|(_, switches)| per_request(switches as f64)),
        })
    });
    let report = json!({
        "workload": format!("{:?}", args.workload),
        "concurrency": args.concurrency,
        "requests": count,
        "errors": outcome.errors,
        "seconds": elapsed,
        "throughputPerSecond": count as f64 / elapsed,
        "latencyMs": {
            "p50": percentile(&outcome.latencies, 0.50),
            "p99": percentile(&outcome.latencies, 0.99),
            "max": percentile(&outcome.latencies, 1.0),
        },
        "projectionLagAtEnd": lag,
        "serverIdleRssMb": idle_rss.map(|b| b as f64 / 1048576.0),
        "commitToSubscriberMs": (!delivery.is_empty()).then(|| json!({
            "events": delivery.len(),
            "missing": outcome.committed.len() - delivery.len(),
            "p50": percentile(&delivery, 0.50),
            "p99": percentile(&delivery, 0.99),
            "max": percentile(&delivery, 1.0),
        })),
        "serverPeakRssMb": peak_rss.map(|b| b as f64 / 1048576.0),
        "serverCostPerRequest": server_cost,
    });
    println!(
        "{:?} c={} n={} errors={} {:.0} req/s p50={:.2}ms p99={:.2}ms max={:.2}ms lag={} peak_rss={}",
        args.workload,
        args.concurrency,
        count,
        outcome.errors,
        count as f64 / elapsed,
        percentile(&outcome.latencies, 0.50),
        percentile(&outcome.latencies, 0.99),
        percentile(&outcome.latencies, 1.0),
        lag,
        peak_rss.map_or("n/a".into(), |b| format!("{:.1}MB", b as f64 / 1048576.0)),
    );
    println!("{report}");
    Ok(())
}
