#!/usr/bin/env bash
# Measures, side by side in one run, PostgreSQL's own single-row insert rate (pgbench: one
# ~300-byte JSON row per transaction into an events-shaped table with a unique key,
# synchronous_commit on) and the gateway's rate over HTTP for one workload (authenticated,
# each request with an Idempotency-Key), both at the same number of clients, and prints the
# ratio. The workload is create-entities (the default) or send-messages (an agent on the
# simulated vendorA at 0 ms), from $WORKLOAD.
#
#   bench/scripts/pgbench-ratio.sh [clients] [seconds]
#   WORKLOAD=send-messages bench/scripts/pgbench-ratio.sh 64 20
#
# Needs: a release build (cargo build --release -p cli -p gateway-bench), psql and pgbench, and
# PostgreSQL at $PG_URL (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail

CLIENTS=${1:-64}
SECONDS_EACH=${2:-20}
WORKLOAD=${WORKLOAD:-create-entities}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
GATEWAY=$ROOT/target/release/gateway
BENCH=$ROOT/target/release/gateway-bench
DB=gw_ratio_$$

for binary in "$GATEWAY" "$BENCH"; do
  [ -x "$binary" ] || { echo "missing $binary: cargo build --release -p cli -p gateway-bench" >&2; exit 1; }
done

psql "$PG_URL/postgres" -qc "CREATE DATABASE $DB" >/dev/null
trap 'psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT

psql "$PG_URL/$DB" -q -v ON_ERROR_STOP=1 -f "$ROOT/bench/scripts/sql/single-row-table.sql"
script=$ROOT/bench/scripts/sql/single-row.sql
echo "== pgbench: $CLIENTS clients, ${SECONDS_EACH}s, one row per transaction, synchronous_commit=$(psql "$PG_URL/$DB" -Atc 'SHOW synchronous_commit')"
pg_tps=$(pgbench -n -c "$CLIENTS" -j 2 -T "$SECONDS_EACH" -f "$script" "$PG_URL/$DB" 2>/dev/null \
  | awk '/^tps = / {print $3; exit}')
echo "pgbench: $pg_tps transactions/s"

echo "== gateway: $WORKLOAD over HTTP, $CLIENTS clients, ${SECONDS_EACH}s"
line=$("$BENCH" --spawn "$GATEWAY" --database-url "$PG_URL/$DB" -c "$CLIENTS" -d "$SECONDS_EACH" \
  --workload "$WORKLOAD" | tail -1)
echo "$line"
gw_rps=$(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["throughputPerSecond"])')
python3 - "$pg_tps" "$gw_rps" <<'PY'
import sys
pg, gw = float(sys.argv[1]), float(sys.argv[2])
print(f"ratio gateway/pgbench: {gw / pg:.2f} ({gw:.0f} / {pg:.0f})")
PY
