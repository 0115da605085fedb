//! `gateway-bench`: drives the gateway's HTTP API with C concurrent connections for N
//! requests or T seconds, and prints throughput, latency percentiles, errors, the projection
//! lag at the end, and, when it started the server itself, the server's peak RSS.
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Workload {
    /// `POST /v1/bench-items`, each with a fresh `Idempotency-Key`.
    CreateEntities,
}

#[derive(Debug, Parser)]
#[command(name = "gateway-bench", version)]
struct Args {
    /// Base URL of a running gateway (ignored with --spawn).
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
    /// Tenant of the requests.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Requests sent (and discarded) before measuring.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
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

async fn spawn_server(
    binary: &PathBuf,
    database_url: Option<&str>,
) -> anyhow::Result<(Server, String)> {
    let port = free_port()?;
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("RUST_LOG", "warn")
        .env("GATEWAY_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let data = match database_url {
        Some(url) => {
            command.env("DATABASE_URL", url);
            None
        }
        None => {
            let dir = std::env::temp_dir().join(format!("gateway-bench-{}", uuid::Uuid::new_v4()));
            command
                .env("GATEWAY_DATA_DIR", &dir)
                .env_remove("DATABASE_URL");
            Some(TempDir(dir))
        }
    };
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
    Ok((
        Server {
            child,
            pid,
            _data: data,
        },
        url,
    ))
}

fn request(client: &reqwest::Client, url: &str, tenant: &str, n: u64) -> reqwest::RequestBuilder {
    client
        .post(format!("{url}/v1/bench-items"))
        .header("x-tenant-id", tenant)
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
}

async fn run_load(
    client: &reqwest::Client,
    url: &str,
    args: &Args,
    total: Option<u64>,
    until: Option<Instant>,
) -> Outcome {
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let url = url.to_string();
        let tenant = args.tenant.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|total| n >= total)
                    || until.is_some_and(|t| Instant::now() >= t)
                {
                    break;
                }
                let started = Instant::now();
                let ok = match request(&client, &url, &tenant, n).send().await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                latencies.push(started.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut outcome = Outcome {
        latencies: Vec::new(),
        errors: 0,
    };
    for task in tasks {
        if let Ok((latencies, errors)) = task.await {
            outcome.latencies.extend(latencies);
            outcome.errors += errors;
        }
    }
    outcome
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
    let (server, url) = match &args.spawn {
        Some(binary) => {
            let (server, url) = spawn_server(binary, args.database_url.as_deref()).await?;
            (Some(server), url)
        }
        None => (None, args.url.trim_end_matches('/').to_string()),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let idle_rss = server.as_ref().and_then(|s| rss(s.pid)).map(|(now, _)| now);

    if args.warmup > 0 {
        run_load(&client, &url, &args, Some(args.warmup), None).await;
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
    let started = Instant::now();
    let mut outcome = run_load(&client, &url, &args, total, until).await;
    let elapsed = started.elapsed().as_secs_f64();

    let ready: Value = client
        .get(format!("{url}/ready"))
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
        "serverPeakRssMb": peak_rss.map(|b| b as f64 / 1048576.0),
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
