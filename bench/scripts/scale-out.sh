#!/usr/bin/env bash
# Throughput of 1, 2 and 3 API processes on one PostgreSQL database, with one projector
# process and one relay process beside them (gateway serve --roles), and the lag each
# worker process reports right after the load.
#   bench/scripts/scale-out.sh [SECONDS] [CLIENTS]
# Needs a release build (cargo build --release -p cli -p gateway-bench), PostgreSQL at
# PG_URL (default postgres://postgres@127.0.0.1:5432) and NATS at NATS_URL (default
# nats://127.0.0.1:4222). Creates and drops the database gw_scale_out.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=${1:-20}
CLIENTS=${2:-64}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
NATS=${NATS_URL:-nats://127.0.0.1:4222}
DB=gw_scale_out
GATEWAY=target/release/gateway
BENCH=target/release/gateway-bench
export DATABASE_URL="$PG_URL/$DB"

pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT

psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
$GATEWAY migrate >/dev/null 2>&1
KEY=$($GATEWAY tenants create --name Bench --id bench --rate-limit-per-minute 100000000 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["apiKey"]["key"])')

start() { # PORT ROLES
  PORT=$1 GATEWAY_ROLES=$2 NATS_URL=$NATS GATEWAY_NATS_STREAM=SCALEOUT GATEWAY_NATS_SUBJECT_PREFIX=scaleout \
    RUST_LOG=warn $GATEWAY serve >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return; sleep 0.1; done
  echo "the gateway on $1 did not start" >&2; exit 1
}
start 18201 projectors
start 18202 relay
start 18211 api
start 18212 api
start 18213 api
curl -sf -X POST http://127.0.0.1:18211/v1/entity-types -H "X-API-Key: $KEY" \
  -H 'content-type: application/json' -d '{"name": "bench-items", "schemaless": true}' >/dev/null

urls=(http://127.0.0.1:18211 http://127.0.0.1:18211,http://127.0.0.1:18212
      http://127.0.0.1:18211,http://127.0.0.1:18212,http://127.0.0.1:18213)
for n in 1 2 3; do
  result=$($BENCH --workload create-entities --url "${urls[$((n - 1))]}" --api-key "$KEY" \
    -c "$CLIENTS" -d "$SECONDS_PER_RUN" --warmup 500 2>/dev/null | tail -n 1)
  lag=$(curl -s http://127.0.0.1:18201/ready | python3 -c 'import json, sys; r = json.load(sys.stdin)["projectors"]; print(max(p["lagEvents"] for p in r.values()), max(p["lagSeconds"] for p in r.values()))')
  relay=$(curl -s http://127.0.0.1:18202/ready | python3 -c 'import json, sys; r = json.load(sys.stdin)["relay"]; print(r["lagEvents"], r["lagSeconds"])')
  echo "{\"apiProcesses\": $n, \"clients\": $CLIENTS, \"result\": $result, \"projectorLagAfter\": \"$lag\", \"relayLagAfter\": \"$relay\"}"
  # Let the workers catch up before the next run.
  for _ in $(seq 1 300); do
    behind=$(curl -s http://127.0.0.1:18201/ready | python3 -c 'import json, sys; r = json.load(sys.stdin)["projectors"]; print(max(p["lagEvents"] for p in r.values()))')
    [ "$behind" = 0 ] && break
    sleep 1
  done
done
