#!/usr/bin/env bash
# Counts the instructions a projection rebuild spends per event (valgrind's callgrind), on
# SQLite or PostgreSQL. The wall-clock rate of `gateway projections rebuild` moves by a
# quarter between runs of one build on this machine; the instruction count repeats within a
# fraction of a percent, so two builds compare on it. N `items` records are seeded (not
# counted), then the rebuild of `entities` runs under callgrind.
#
#   bench/scripts/rebuild-instructions.sh [N]
#   GATEWAY=/tmp/gateway-before BACKEND=postgres bench/scripts/rebuild-instructions.sh 100000
#
# Needs: a release build (cargo build --release -p cli), valgrind, and for BACKEND=postgres,
# psql and PostgreSQL at $PG_URL (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
N=${1:-100000}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
GATEWAY=${GATEWAY:-$ROOT/target/release/gateway}
BACKEND=${BACKEND:-sqlite}
WORK=$(mktemp -d)
DB=gw_rebuild_$$
[ -x "$GATEWAY" ] || { echo "missing $GATEWAY: cargo build --release -p cli" >&2; exit 1; }
cleanup() {
  [ "$BACKEND" = postgres ] && psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
case "$BACKEND" in
  sqlite) export GATEWAY_DATA_DIR=$WORK/data ;;
  postgres)
    psql "$PG_URL/postgres" -qc "CREATE DATABASE $DB" >/dev/null
    export DATABASE_URL=$PG_URL/$DB ;;
  *) echo "BACKEND is sqlite or postgres" >&2; exit 1 ;;
esac
RUST_LOG=warn "$GATEWAY" seed entities --count "$N" >/dev/null
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
  "$GATEWAY" projections rebuild entities >"$WORK/report.json" 2>"$WORK/valgrind.log"
[ -n "${KEEP:-}" ] && cp "$WORK/callgrind.out" "$KEEP"
python3 - "$WORK/report.json" "$WORK/callgrind.out" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
total = next(int(line.split()[1]) for line in open(sys.argv[2]) if line.startswith("summary:"))
events = report["events"]
print(f"events: {events}, instructions: {total}, per event: {total // events}")
PY
