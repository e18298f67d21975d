#!/usr/bin/env bash
# Before/after overload rounds, interleaved (issue 19, item 12). For each round and each
# checkout: start `eeserve serve` from that checkout on the default model, probe capacity
# (closed loop, 16 k6 clients, no deadline), then the closed-loop flood (VUS clients that
# ignore Retry-After) and the open-loop 4x, both with deadline_ms=$DEADLINE; stop the server.
# One JSON per run under $OUT. Loopback only; each run <= $DUR s.
#   scripts/overload_rounds.sh OUT ROUNDS CHECKOUT_BEFORE CHECKOUT_AFTER
set -euo pipefail
OUT=$1; ROUNDS=$2; shift 2
PY=${PY:-/work/main/.venv/bin/python}
MODEL=${MODEL:-/work/main/artifacts/text-default}
DUR=${DUR:-20}; DEADLINE=${DEADLINE:-1000}; VUS=${VUS:-200}; PORT=${PORT:-18921}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
for r in $(seq 1 "$ROUNDS"); do
  for co in "$@"; do
    name=$(basename "$co")
    (cd "$co" && PYTHONPATH=$co OMP_WAIT_POLICY=PASSIVE exec "$PY" -m service serve "$MODEL" \
      --port "$PORT" --device cpu) > "$OUT/server-$name-$r.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 180); do
      curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 1; done
    url="http://127.0.0.1:$PORT"
    common=(--duration-s "$DUR" --deadline-ms "$DEADLINE" --client-timeout-s 30 --settle-s 1)
    cap=$(PYTHONPATH=$HERE/.. "$PY" "$HERE/overload.py" "$url" --mode closed --vus "$VUS" \
      --probe-s 8 "${common[@]}" --json "$OUT/closed-$name-$r.json" >/dev/null; \
      "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['capacity_rps'])" \
      "$OUT/closed-$name-$r.json") || true
    sleep 2
    PYTHONPATH=$HERE/.. "$PY" "$HERE/overload.py" "$url" --mode open --capacity-rps "$cap" \
      "${common[@]}" --json "$OUT/open-$name-$r.json" >/dev/null || true
    kill "$pid"; wait "$pid" || true
    sleep 2
  done
done
