#!/usr/bin/env bash
# Dependency drift check (non-gating; `make drift`): what would break if the locks moved today?
#
# Installs the NEWEST versions pyproject.toml allows into a throwaway venv (torch stays the
# 2.13.0 pin), then runs lint (ruff, mypy, import contracts) and the unit tests there, and
# reports every package whose newest allowed version differs from requirements-dev.lock and
# what broke. The gate (`make test`, .ci/run) always runs on the lock; this never changes it.
#
# Environment: DRIFT_VENV (default: a temporary directory, removed afterwards), PY (python3),
# DRIFT_TESTS (default tests/unit). Exit status: 0 when everything passed on the newest
# versions, 1 when something broke (the report says what), 2 when the install itself failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
TESTS=${DRIFT_TESTS:-tests/unit}
if [[ -n "${DRIFT_VENV:-}" ]]; then
    VENV=$DRIFT_VENV
else
    VENV=$(mktemp -d "${TMPDIR:-/tmp}/eeserve-drift.XXXXXX")
    trap 'rm -rf "$VENV"' EXIT
fi
say() { printf 'drift: %s\n' "$*"; }

say "installing the newest allowed versions into $VENV"
"$PY" -m venv "$VENV" || exit 2
"$VENV/bin/pip" install -q --upgrade pip >/dev/null || exit 2
if ! "$VENV/bin/pip" install -q --upgrade --upgrade-strategy eager -e '.[dev]' \
        >"$VENV/install.log" 2>&1; then
    say "install failed:"; tail -5 "$VENV/install.log"; exit 2
fi

say "newest allowed vs requirements-dev.lock:"
"$VENV/bin/python" - requirements-dev.lock <<'EOF'
import re
import sys
from importlib import metadata

locked = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", open(sys.argv[1]).read(), re.M))
norm = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in locked.items()}
now = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
       for d in metadata.distributions()}
moved = sorted((k, norm[k], now[k]) for k in norm if k in now and now[k] != norm[k])
added = sorted(k for k in now if k not in norm and k != "eeserve")
for name, old, new in moved:
    print(f"  {name:32s} {old:>14s} -> {new}")
print(f"  {len(moved)} of {len(norm)} locked packages would move"
      + (f"; new packages: {', '.join(added)}" if added else ""))
EOF

failed=()
step() {  # step NAME COMMAND...
    local name=$1; shift
    if "$@" >"$VENV/$name.log" 2>&1; then
        say "$name: passed"
    else
        say "$name: FAILED (last lines below)"; tail -15 "$VENV/$name.log" | sed 's/^/    /'
        failed+=("$name")
    fi
}
step ruff "$VENV/bin/ruff" check service policies models tools bench tests deploy
step mypy "$VENV/bin/mypy" service policies models tools bench
step import-contracts "$VENV/bin/lint-imports" --no-cache
step unit-tests "$VENV/bin/pytest" -q -x -p no:cacheprovider "$TESTS"

if ((${#failed[@]})); then
    say "broke on the newest allowed versions: ${failed[*]} (the lock still holds; fix, then make upgrade-lock)"
    exit 1
fi
say "everything passed on the newest allowed versions: \`make upgrade-lock\` is safe to try"
