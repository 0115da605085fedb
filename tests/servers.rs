//! The PostgreSQL and NATS servers the suite runs against.
//!
//! `GATEWAY_TEST_DATABASE_URL` (a user allowed to create databases) and
//! `GATEWAY_TEST_NATS_URL` name servers to use. When one is not set, the first test that
//! needs it starts a private one for the whole test binary: a PostgreSQL cluster made with
//! `initdb` in a temporary folder (durable settings as in production: `fsync` and
//! `synchronous_commit` on), or a `nats-server -js` with its store in a temporary folder,
//! each on a free port. A watchdog beside each server stops it and removes its folder when
//! the test process ends, however it ends. A system cluster's data is never touched.
//!
//! When a server's programs are not installed, every test that needs it fails with the
//! Debian package to install (`.ci/run` installs them).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The PostgreSQL URL tests create their databases with.
pub fn postgres_url() -> String {
    static PRIVATE: OnceLock<Result<String, String>> = OnceLock::new();
    named_or_private("GATEWAY_TEST_DATABASE_URL", &PRIVATE, start_postgres)
}

/// The NATS URL the relay and subscribers of the tests use.
pub fn nats_url() -> String {
    static PRIVATE: OnceLock<Result<String, String>> = OnceLock::new();
    named_or_private("GATEWAY_TEST_NATS_URL", &PRIVATE, start_nats)
}

/// The URL `variable` names, else the private server's, started on first use (once per test
/// binary: `private` keeps the outcome, a failure included).
fn named_or_private(
    variable: &str,
    private: &OnceLock<Result<String, String>>,
    start: fn() -> Result<String, String>,
) -> String {
    if let Ok(url) = std::env::var(variable) {
        return url;
    }
    match private.get_or_init(start) {
        Ok(url) => url.clone(),
        Err(reason) => panic!("{reason}"),
    }
}

/// The `host:port` of a server URL (`postgres://user@host:port/db`, `nats://host:port`).
pub fn address_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Runs `server` (a program and its arguments) under a watchdog that stops it with `stop`
/// (a signal name) and removes `folder` once this process has ended. The watchdog runs in
/// a session of its own, so that a Ctrl-C meant for the tests reaches it only through their
/// end.
fn supervise(server: &[String], folder: &Path, stop: &str, log: &Path) -> Result<(), String> {
    const WATCHDOG: &str = r#"
        parent=$1; folder=$2; signal=$3; log=$4; shift 4
        "$@" >"$log" 2>&1 &
        server=$!
        while kill -0 "$parent" 2>/dev/null && kill -0 "$server" 2>/dev/null; do sleep 0.5; done
        kill -s "$signal" "$server" 2>/dev/null
        wait "$server"
        rm -rf "$folder"
        # A server that stopped by itself leaves its log for the tests to show.
        kill -0 "$parent" 2>/dev/null || rm -f "$log"
    "#;
    Command::new("setsid")
        .arg("bash")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("watchdog")
        .arg(std::process::id().to_string())
        .arg(folder)
        .arg(stop)
        .arg(log)
        .args(server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("could not start the watchdog (setsid, bash): {e}"))
}

/// Waits until `log` says `ready`; the log's end when it does not in time.
fn wait_for(log: &Path, ready: &str, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(log) {
            let _ = file.read_to_string(&mut text);
        }
        if text.contains(ready) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let tail: String = text.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            return Err(format!(
                "{what} did not start within 60 s; its log ends:\n{tail}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port nothing listens on now.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// `program` from `PATH`, else from the first of `folders` (newest first) that has it.
fn find(program: &str, folders: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(folders.iter().cloned())
        .map(|folder| folder.join(program))
        .find(|candidate| candidate.is_file())
}

fn temporary_folder(kind: &str) -> Result<PathBuf, String> {
    let folder = std::env::temp_dir().join(format!(
        "gateway-test-{kind}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    Ok(folder)
}

/// A PostgreSQL program (`initdb`, `pgbench`, …): on the `PATH`, else in Debian's folder of
/// each major version's programs, the newest first.
pub fn postgres_program(program: &str) -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|folder| {
        let version = folder.parent().and_then(|v| v.file_name());
        std::cmp::Reverse(
            version
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    find(program, &versions)
}

fn start_postgres() -> Result<String, String> {
    let (Some(initdb), Some(postgres)) = (postgres_program("initdb"), postgres_program("postgres"))
    else {
        return Err(
            "the tests need PostgreSQL's server programs (initdb, postgres) to start a \
                    private server: install them (Debian: apt-get install postgresql), or set \
                    GATEWAY_TEST_DATABASE_URL to a server where the user may create databases"
                .into(),
        );
    };
    let folder = temporary_folder("postgres")?;
    let data = folder.join("data");
    // PostgreSQL refuses to run as root: then it runs as the `postgres` system user.
    let as_user: Vec<String> = if running_as_root() {
        let uid = user_id("postgres").ok_or(
            "running as root, the private PostgreSQL needs a `postgres` system user to run as \
             (Debian's postgresql package makes it)",
        )?;
        let chown = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}"))
            .arg(&folder)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !chown.success() {
            return Err(format!("could not give {} to postgres", folder.display()));
        }
        [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    };
    let mut init: Vec<String> = as_user.clone();
    init.extend([
        initdb.display().to_string(),
        "--pgdata".into(),
        data.display().to_string(),
        "--username=postgres".into(),
        "--auth=trust".into(),
        "--encoding=UTF8".into(),
        "--no-instructions".into(),
        // initdb's own flush to disk only; the server below keeps fsync on.
        "--no-sync".into(),
    ]);
    let output = Command::new(&init[0])
        .args(&init[1..])
        .output()
        .map_err(|e| format!("{}: {e}", init[0]))?;
    if !output.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let port = free_port()?;
    let mut server = as_user;
    server.extend([
        postgres.display().to_string(),
        "-D".into(),
        data.display().to_string(),
        "-p".into(),
        port.to_string(),
        "-k".into(),
        folder.display().to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        "max_connections=300".into(),
        "-c".into(),
        "fsync=on".into(),
        "-c".into(),
        "synchronous_commit=on".into(),
    ]);
    let log =
        std::env::temp_dir().join(format!("gateway-test-postgres-{}.log", std::process::id()));
    // SIGINT: PostgreSQL's fast shutdown.
    supervise(&server, &folder, "INT", &log)?;
    wait_for(
        &log,
        "database system is ready to accept connections",
        "the private PostgreSQL",
    )?;
    eprintln!(
        "tests: started a private PostgreSQL on 127.0.0.1:{port} ({}; stopped when the tests end)",
        folder.display()
    );
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

fn start_nats() -> Result<String, String> {
    let Some(nats) = find("nats-server", &[PathBuf::from("/usr/sbin")]) else {
        return Err(
            "the tests need nats-server to start a private NATS: install it (Debian: \
                    apt-get install nats-server), or set GATEWAY_TEST_NATS_URL to a NATS server \
                    with JetStream"
                .into(),
        );
    };
    let folder = temporary_folder("nats")?;
    let port = free_port()?;
    let server = [
        nats.display().to_string(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-js".into(),
        "-sd".into(),
        folder.join("jetstream").display().to_string(),
    ];
    let log = std::env::temp_dir().join(format!("gateway-test-nats-{}.log", std::process::id()));
    supervise(&server, &folder, "TERM", &log)?;
    wait_for(&log, "Server is ready", "the private NATS")?;
    eprintln!(
        "tests: started a private NATS with JetStream on 127.0.0.1:{port} (stopped when the tests end)"
    );
    Ok(format!("nats://127.0.0.1:{port}"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn user_id(name: &str) -> Option<u32> {
    let output = Command::new("id").arg("-u").arg(name).output().ok()?;
    if !output.status.success() {
        return None;
    }
    std::str::from_utf8(&output.stdout)
        .ok()?
        .trim()
        .parse()
        .ok()
}
