//! The `gateway` binary's argument errors and exit codes, run as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A folder of its own for the run's SQLite file, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gateway-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gateway(scratch: &Scratch, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL")
        .env_remove("JWT_SECRET")
        .env("GATEWAY_DATA_DIR", &scratch.0)
        .env("GATEWAY_LOG_FILTER", "warn")
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let scratch = Scratch::new("usage");
    let unknown = gateway(&scratch, &["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("unrecognized subcommand 'frobnicate'"));

    let missing = gateway(&scratch, &["keys", "create", "--tenant", "acme"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--roles"), "{}", stderr(&missing));

    let not_a_number = gateway(&scratch, &["seed", "usage", "--count", "many"]);
    assert_eq!(not_a_number.status.code(), Some(2));
    assert!(stderr(&not_a_number).contains("invalid value 'many'"));

    let help = gateway(&scratch, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: gateway"));
}

#[test]
fn a_command_that_fails_exits_1_with_its_reason_and_prints_nothing() {
    let scratch = Scratch::new("fails");
    let no_tenant = gateway(
        &scratch,
        &["keys", "create", "--tenant", "nobody", "--roles", "reader"],
    );
    assert_eq!(no_tenant.status.code(), Some(1));
    assert!(
        stderr(&no_tenant).contains("no tenant 'nobody'"),
        "{}",
        stderr(&no_tenant)
    );
    assert!(no_tenant.stdout.is_empty());

    let bad_role = gateway(
        &scratch,
        &["keys", "create", "--tenant", "platform", "--roles", "king"],
    );
    assert_eq!(bad_role.status.code(), Some(1));

    let no_secret = gateway(&scratch, &["token", "--service", "billing"]);
    assert_eq!(no_secret.status.code(), Some(1));
    assert!(stderr(&no_secret).contains("JWT_SECRET is not set"));
}

#[test]
fn a_command_that_succeeds_exits_0_with_json_on_stdout() {
    let scratch = Scratch::new("succeeds");
    let created = gateway(
        &scratch,
        &["tenants", "create", "--name", "Acme", "--id", "acme"],
    );
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    let body: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(body["tenant"]["id"], "acme");
    assert!(body["apiKey"]["key"].as_str().unwrap().starts_with("gw_"));

    let again = gateway(
        &scratch,
        &["tenants", "create", "--name", "Acme", "--id", "acme"],
    );
    assert_eq!(again.status.code(), Some(1), "a tenant is created once");
}
