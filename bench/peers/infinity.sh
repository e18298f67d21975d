#!/usr/bin/env bash
# infinity-emb (torch engine) in a throwaway venv, for the HTTP comparison (not in CI).
#   bench/peers/infinity.sh [artifact] [venv]
#   then: python -m bench.compare ARTIFACT --targets ... infinity --hf-dir /tmp/NAME-hf
# Install recipe from ../shared/reference/cpu-runtimes.md (~3 min, 1.4 GB); torch stays 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/../.."
ART=${1:-artifacts/text-default}
VENV=${2:-/tmp/infinity-venv}
if [ ! -x "$VENV/bin/infinity_emb" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q "infinity-emb[server,torch]==0.0.78"
fi
# infinity needs a standard AutoModelForSequenceClassification directory
.venv/bin/python -m models.build.hf_twin "$ART" "/tmp/$(basename "$ART")-hf"
echo "infinity venv: $VENV; model dir: /tmp/$(basename "$ART")-hf"
