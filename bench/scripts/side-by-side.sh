#!/usr/bin/env bash
# Runs the same load against two gateway binaries in alternation (A, B, A, B, …), so that
# both meet the same machine in the same minutes, and prints each run and the median of each
# side: the way to show that a change leaves the command path no slower.
#
#   bench/scripts/side-by-side.sh BEFORE_BINARY AFTER_BINARY [rounds] [seconds] [clients]
#   WORKLOADS="create-entities send-messages" BACKENDS="sqlite postgres" bench/scripts/side-by-side.sh …
#
# Needs: target/release/gateway-bench (cargo build --release -p gateway-bench), and for the
# postgres backend psql and PostgreSQL at $PG_URL (default postgres://postgres@127.0.0.1:5432).
# Every run gets a fresh SQLite folder or a fresh database.
set -euo pipefail

BEFORE=${1:?the binary before the change}
AFTER=${2:?the binary after the change}
ROUNDS=${3:-3}
SECONDS_EACH=${4:-10}
CLIENTS=${5:-16}
WORKLOADS=${WORKLOADS:-create-entities send-messages}
BACKENDS=${BACKENDS:-sqlite postgres}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=$ROOT/target/release/gateway-bench
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS" "$RESULTS.log"' EXIT

for binary in "$BEFORE" "$AFTER" "$BENCH"; do
  [ -x "$binary" ] || { echo "missing $binary" >&2; exit 1; }
done

run() { # side binary workload backend
  local side=$1 binary=$2 workload=$3 backend=$4 line db=""
  local args=(--spawn "$binary" -c "$CLIENTS" -d "$SECONDS_EACH" --workload "$workload")
  if [ "$backend" = postgres ]; then
    db=gw_side_$$_$RANDOM
    psql "$PG_URL/postgres" -qc "CREATE DATABASE $db" >/dev/null
    args+=(--database-url "$PG_URL/$db")
  fi
  line=$("$BENCH" "${args[@]}" 2>>"$RESULTS.log" | tail -1)
  [ -n "$db" ] && psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  echo "$side $workload $backend $line" >>"$RESULTS"
  echo "$line" | python3 -c 'import json, sys; r = json.load(sys.stdin); l = r["latencyMs"]; print(sys.argv[1], "%.0f req/s p50=%.2fms p99=%.2fms errors=%d" % (r["throughputPerSecond"], l["p50"], l["p99"], r["errors"]))' "$side $workload $backend"
}

for workload in $WORKLOADS; do
  for backend in $BACKENDS; do
    for round in $(seq 1 "$ROUNDS"); do
      run before "$BEFORE" "$workload" "$backend"
      run after "$AFTER" "$workload" "$backend"
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, workload, backend, report = line.split(" ", 3)
    r = json.loads(report)
    rows.setdefault((workload, backend), {}).setdefault(side, []).append(r)
print()
print("| workload | backend | side | runs | req/s (median) | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|---|---|---|")
for (workload, backend), sides in rows.items():
    for side in ("before", "after"):
        rs = sides.get(side, [])
        if not rs:
            continue
        med = lambda f: statistics.median(f(r) for r in rs)
        print(f"| {workload} | {backend} | {side} | {len(rs)} | {med(lambda r: r['throughputPerSecond']):.0f} "
              f"| {med(lambda r: r['latencyMs']['p50']):.2f} | {med(lambda r: r['latencyMs']['p99']):.2f} "
              f"| {sum(r['errors'] for r in rs)} |")
    b = statistics.median(r["throughputPerSecond"] for r in sides.get("before", [{"throughputPerSecond": 0}]))
    a = statistics.median(r["throughputPerSecond"] for r in sides.get("after", [{"throughputPerSecond": 0}]))
    if b:
        print(f"|  |  | after/before | | {a / b:.2f} | | | |")
PY
