#!/usr/bin/env bash
# Where the server's GIL goes under an open-loop flood (issue 19): start `eeserve serve` on the
# default model, send 4x CAP req/s for 20 s with k6 (scripts/overload.py), and after 6 s sample
# the thread holding the GIL for 10 s with py-spy (`pip install py-spy`); OUT gets the raw
# collapsed stacks and the run's JSON. Loopback only.
#   scripts/profile_flood.sh OUT [CAP]
set -euo pipefail
OUT=$1; CAP=${2:-620}; PORT=${PORT:-18961}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MODEL=${MODEL:-$ROOT/artifacts/text-default}
mkdir -p "$OUT"
PYTHONPATH=$ROOT OMP_WAIT_POLICY=PASSIVE "$PY" -m service serve "$MODEL" --port "$PORT" \
  --device cpu > "$OUT/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 1; done
PYTHONPATH=$ROOT "$PY" "$ROOT/scripts/overload.py" "http://127.0.0.1:$PORT" --mode open \
  --capacity-rps "$CAP" --duration-s 20 --deadline-ms 1000 --client-timeout-s 20 --settle-s 1 \
  --json "$OUT/open.json" > /dev/null 2>&1 &
load=$!
sleep 6
"$(dirname "$PY")/py-spy" record --gil -r 200 -d 10 -p "$pid" --format raw -o "$OUT/gil.txt" \
  > /dev/null 2>&1
wait "$load"
kill "$pid"; wait "$pid" || true
