#!/usr/bin/env bash
# Counts the instructions the gateway process spends per message sent (valgrind's callgrind:
# instructions, not seconds, so the count repeats within a fraction of a percent however busy
# the machine is). The gateway runs under callgrind against a fresh PostgreSQL database; the
# load generator sends 200 messages to warm up, the counters are zeroed, then it sends N more
# (`send-messages`, 4 clients, simulated vendorA at 0 ms) and the count is dumped.
#
#   bench/scripts/instructions-per-message.sh [N]
#   GATEWAY=/tmp/gateway-before WORKLOAD=create-entities bench/scripts/instructions-per-message.sh 1000
#
# GATEWAY picks another gateway binary (to compare two builds); WORKLOAD another workload of
# the load generator (a request then counts as the "message"); KEEP=file keeps the profile. A
# run with any failed request fails: instructions of error answers measure nothing.
#
# Needs: a release build (cargo build --release -p cli -p gateway-bench), valgrind, psql, and
# PostgreSQL at $PG_URL (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
N=${1:-1000}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
GATEWAY=${GATEWAY:-$ROOT/target/release/gateway}
WORKLOAD=${WORKLOAD:-send-messages}
BENCH=$ROOT/target/release/gateway-bench
PORT=${PORT:-18099}
DB=gw_instructions_$$
WORK=$(mktemp -d)
# vgdb (behind callgrind_control) names its pipes after these.
export USER=${USER:-$(id -un)} HOST=127.0.0.1

for binary in "$GATEWAY" "$BENCH"; do
  [ -x "$binary" ] || { echo "missing $binary: cargo build --release -p cli -p gateway-bench" >&2; exit 1; }
done
psql "$PG_URL/postgres" -qc "CREATE DATABASE $DB" >/dev/null
cleanup() {
  [ -n "${VPID:-}" ] && kill "$VPID" 2>/dev/null && wait "$VPID" 2>/dev/null
  psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
export DATABASE_URL=$PG_URL/$DB

KEY=$("$GATEWAY" tenants create --name bench --id bench --rate-limit-per-minute 1000000000 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"]["key"])')
PORT=$PORT RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
  "$GATEWAY" serve >/dev/null 2>"$WORK/valgrind.log" &
VPID=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.5
done
# The record workloads write to a schemaless type, defined here as the bench's --spawn does.
curl -sf -X POST "http://127.0.0.1:$PORT/v1/entity-types" -H "x-api-key: $KEY" \
  -H 'content-type: application/json' -d '{"name": "bench-items", "schemaless": true}' >/dev/null
send() {
  "$BENCH" --url "http://127.0.0.1:$PORT" --api-key "$KEY" --workload "$WORKLOAD" \
    -c 4 -n "$1" --warmup 0 | tail -1
}
send 200 >/dev/null
callgrind_control -z "$VPID" >/dev/null
send "$N" | python3 -c 'import json,sys; j=json.load(sys.stdin); print("messages:", j["requests"], "errors:", j["errors"]); sys.exit(1 if j["errors"] else 0)'
callgrind_control -d "$VPID" >/dev/null
total=$(grep -h '^summary:' "$WORK"/callgrind.*.1 | awk '{print $2}')
echo "instructions: $total, per message: $((total / N))"
# KEEP=file keeps the profile, for callgrind_annotate.
[ -n "${KEEP:-}" ] && cp "$WORK"/callgrind.*.1 "$KEEP"
