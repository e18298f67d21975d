#!/usr/bin/env bash
# Peer vs eeserve, closed loop: each server alone on the machine, 16 clients, one text per
# request, the same test-split texts. Writes docs/figures/closed_loop_{peer,eeserve}.json/png.
#   scripts/closed_loop.sh [artifact] [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
ART=${1:-artifacts/text-default}
N=${2:-400}
BIN=.venv/bin
wait_ready() { for _ in $(seq 300); do curl -sf "127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 1; done; return 1; }
$BIN/eeserve peer "$ART" --port 18411 > logs/peer.log 2>&1 & P=$!
wait_ready 18411
$BIN/eeserve bench http://127.0.0.1:18411 -c 16 -n "$N" --warmup 16 --quiet \
    --json docs/figures/closed_loop_peer.json
kill $P; wait $P 2>/dev/null || true
$BIN/eeserve serve "$ART" --port 18412 --device cpu > logs/serve-bench.log 2>&1 & S=$!
wait_ready 18412
$BIN/eeserve bench http://127.0.0.1:18412 -p none -p beem -p eenet -p maxprob -c 16 -n "$N" \
    --warmup 16 --quiet --json docs/figures/closed_loop_eeserve.json \
    --plot docs/figures/closed_loop_eeserve.png
kill $S; wait $S 2>/dev/null || true
