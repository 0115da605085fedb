//! The benchmark scripts whose results docs/benchmarks.md records stay runnable: when the
//! schema changes and their SQL does not follow, they fail here, not on the day a measurement
//! is rerun.

use std::path::Path;
use std::process::Command;

/// `bench/scripts/pg-ceiling.sh` writes the gateway's rows with pgbench, through the
/// migrations' schema; one second per run, groups of two.
#[test]
fn the_ceiling_script_runs_on_the_current_schema() {
    let server = crate::helpers::postgres_server_url();
    let pgbench = crate::servers::postgres_program("pgbench")
        .expect("the ceiling script needs pgbench (Debian: apt-get install postgresql)");
    let folder = pgbench.parent().expect("pgbench's folder");
    let path = std::env::join_paths(std::iter::once(folder.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("a PATH");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let output = Command::new("bash")
        .arg(root.join("bench/scripts/pg-ceiling.sh"))
        .args(["1", "2"])
        .env("PG_URL", &server)
        .env("PATH", path)
        .env("CLIENTS", "2")
        .env("WRITERS", "1")
        .output()
        .expect("run bash");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pg-ceiling.sh failed:\n{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for rate in [
        "single-row inserts",
        "create-entity rows",
        "send-message rows",
    ] {
        assert!(printed.contains(rate), "no {rate} rate in:\n{printed}");
    }
}
