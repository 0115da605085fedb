#!/usr/bin/env bash
# The most any gateway could reach on this machine's PostgreSQL, side by side with the
# single-row reference of pgbench-ratio.sh: pgbench itself writes the rows that a create-entity
# request (and a message) must leave in the gateway's tables, many requests per transaction as
# the group commit does, with every value made in the database and nothing read back. No HTTP,
# no gateway, and the database has the whole machine: a gateway's rate over HTTP can only be
# lower. Prints both rates in requests/s and their ratio to the single-row rate.
#
#   bench/scripts/pg-ceiling.sh [seconds] [group]
#
# Needs psql and pgbench, and PostgreSQL at $PG_URL (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail

SECONDS_EACH=${1:-15}
GROUP=${2:-32}
CLIENTS=${CLIENTS:-64}
WRITERS=${WRITERS:-4}
SESSIONS=10000
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SQL=$ROOT/bench/scripts/sql
DB=gw_ceiling_$$

psql "$PG_URL/postgres" -qc "CREATE DATABASE $DB" >/dev/null
trap 'psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT
for migration in "$ROOT"/migrations/postgres/*.sql; do
  psql "$PG_URL/$DB" -q -v ON_ERROR_STOP=1 -f "$migration"
done
psql "$PG_URL/$DB" -q -v ON_ERROR_STOP=1 -f "$SQL/single-row-table.sql"
psql "$PG_URL/$DB" -q -v ON_ERROR_STOP=1 -c "INSERT INTO sessions (tenant_id, id, agent_id, metadata, status,
  message_count, version, created_at, last_activity_at)
  SELECT 'bench-t', 's' || n, 'agt_1', '{}', 'active', 0, 1, now(), now() FROM generate_series(1, $SESSIONS) n"

# A run that aborts (a statement the schema no longer takes) stops the script with
# pgbench's own error, instead of a rate that is not there.
tps() {
  local out rate
  out=$(pgbench -n -j 2 -T "$SECONDS_EACH" "$@" "$PG_URL/$DB" 2>&1) || true
  rate=$(awk '/^tps = / {print $3; exit}' <<<"$out")
  if [ -z "$rate" ] || grep -q 'aborted' <<<"$out"; then
    echo "pgbench failed ($*):" >&2
    grep -m 3 -E 'ERROR|error' <<<"$out" >&2 || tail -3 <<<"$out" >&2
    exit 1
  fi
  echo "$rate"
}

single=$(tps -c "$CLIENTS" -f "$SQL/single-row.sql")
echo "single-row inserts, $CLIENTS clients: $single transactions/s"
creates=$(tps -c "$WRITERS" -D group="$GROUP" -f "$SQL/create-entity-rows.sql")
messages=$(tps -c "$WRITERS" -D group="$GROUP" -D sessions="$SESSIONS" -f "$SQL/send-message-rows.sql")
python3 - "$single" "$creates" "$messages" "$GROUP" "$WRITERS" <<'PY'
import sys
single, creates, messages, group, writers = map(float, sys.argv[1:])
for name, rate in (("create-entity", creates * group), ("send-message", messages * group)):
    print(f"{name} rows, {int(group)} requests a transaction, {int(writers)} writers: "
          f"{rate:.0f} requests/s = {rate / single:.2f}x single-row")
PY
