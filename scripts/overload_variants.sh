#!/usr/bin/env bash
# Settings variants of one checkout under the same floods (issue 19, item 12): for each variant
# (comma-separated EESERVE_* assignments) start `eeserve serve` on the default model, run the
# open 4x flood and the 200-client closed flood (deadline_ms=1000, $DUR s each, capacity taken
# as $CAP req/s), stop the server. One JSON per run under OUT. Loopback only.
#   scripts/overload_variants.sh OUT "EESERVE_MAX_INFLIGHT_REQUESTS=64" "EESERVE_SHED_HOLD_MS=0"
set -uo pipefail
OUT=$1; shift
PY=${PY:-/work/main/.venv/bin/python}
MODEL=${MODEL:-/work/main/artifacts/text-default}
CAP=${CAP:-220}; DUR=${DUR:-15}; PORT=${PORT:-18941}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
for cfg in "$@"; do
  # shellcheck disable=SC2046
  env $(echo "$cfg" | tr ',' ' ') PYTHONPATH="$ROOT" OMP_WAIT_POLICY=PASSIVE "$PY" -m service \
    serve "$MODEL" --port "$PORT" --device cpu > "$OUT/server-$cfg.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 1; done
  for mode in open closed; do
    PYTHONPATH="$ROOT" "$PY" "$ROOT/scripts/overload.py" "http://127.0.0.1:$PORT" --mode "$mode" \
      --vus 200 --duration-s "$DUR" --capacity-rps "$CAP" --deadline-ms 1000 --settle-s 1 \
      --client-timeout-s 20 --json "$OUT/$mode-$cfg.json" > /dev/null 2>&1
  done
  kill "$pid"; wait "$pid"
done
