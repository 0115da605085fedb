#!/usr/bin/env bash
# Soak of the fault and abuse tests (docs/reliability.md): ROUNDS rounds of the kill and
# database-cut tests under load, the OpenAPI contract test and the proptest properties, each
# round with a new seed and bigger numbers than CI uses. Stops at the first failure, which
# prints its seed or its proptest case. Needs PostgreSQL and NATS like the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-10}
export FAULT_RECORDS=${FAULT_RECORDS:-100}
export CONTRACT_CASES=${CONTRACT_CASES:-100}
export PROPTEST_CASES=${PROPTEST_CASES:-300}
cargo test -p gateway-tests --no-run
for round in $(seq 1 "$ROUNDS"); do
  export CONTRACT_SEED=$((20261203 + round))
  echo "== round $round of $ROUNDS (contract seed $CONTRACT_SEED)"
  set +e
  cargo test -q -p gateway-tests -- faults:: contract:: fuzz:: --nocapture >/tmp/faults-round.log 2>&1
  status=$?
  set -e
  grep -E "kill -9|database cut|test result|panicked|broken|minimal" /tmp/faults-round.log || true
  if [ "$status" -ne 0 ]; then
    echo "round $round failed (log: /tmp/faults-round.log); rerun with CONTRACT_SEED=$CONTRACT_SEED" >&2
    exit 1
  fi
done
echo "$ROUNDS rounds passed"
