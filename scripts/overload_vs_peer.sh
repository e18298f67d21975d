#!/usr/bin/env bash
# The overload floods of scripts/overload_rounds.sh against eeserve and, in the same run, the
# ONNX Runtime peer a user would otherwise write (`eeserve peer --runtime onnx`: FastAPI + the
# artifact as one graph at full depth, 1 intra-op thread, dynamic batching, no shedding), rounds
# interleaved. Per server: capacity probe (k6, 16 clients, 8 s), the 200-client closed flood and
# the open 4x flood (deadline_ms=$DEADLINE, $DUR s each). One JSON per run under OUT, named as
# overload_table.py reads them. Loopback only.
#   scripts/overload_vs_peer.sh OUT ROUNDS
set -euo pipefail
OUT=$1; ROUNDS=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MODEL=${MODEL:-$ROOT/artifacts/text-default}
DUR=${DUR:-20}; DEADLINE=${DEADLINE:-1000}; PORT=${PORT:-18931}
mkdir -p "$OUT"
for r in $(seq 1 "$ROUNDS"); do
  for name in eeserve peer-onnx; do
    if [ "$name" = eeserve ]; then
      cmd=(-m service serve "$MODEL" --port "$PORT" --device cpu)
    else
      cmd=(-m service peer "$MODEL" --runtime onnx --port "$PORT" --threads 1)
    fi
    PYTHONPATH=$ROOT OMP_WAIT_POLICY=PASSIVE "$PY" "${cmd[@]}" > "$OUT/server-$name-$r.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 180); do
      curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 1; done
    url="http://127.0.0.1:$PORT"
    common=(--duration-s "$DUR" --deadline-ms "$DEADLINE" --client-timeout-s 30 --settle-s 1)
    PYTHONPATH=$ROOT "$PY" "$ROOT/scripts/overload.py" "$url" --mode closed --vus 200 \
      --probe-s 8 "${common[@]}" --json "$OUT/closed-$name-$r.json" > /dev/null
    cap=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['capacity_rps'])" \
      "$OUT/closed-$name-$r.json")
    sleep 2
    PYTHONPATH=$ROOT "$PY" "$ROOT/scripts/overload.py" "$url" --mode open --capacity-rps "$cap" \
      "${common[@]}" --json "$OUT/open-$name-$r.json" > /dev/null || true
    kill "$pid"; wait "$pid" || true
    sleep 2
  done
done
