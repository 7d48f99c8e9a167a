#!/usr/bin/env bash
# End-to-end test: a real Streamlit app behind switchyard, driven by headless
# Chromium through Playwright. Installs what it needs, builds the gateway,
# runs tests/e2e/e2e.py, then tests/e2e/client_e2e.py (client.js and the live
# console in the same Chromium), live_e2e.py (switchyard.streamlit),
# replicas_e2e.py (three replicas with their own Streamlit behind a random
# balancer; needs Redis) and railway_e2e.py (examples/railway installed and
# started as Railway would). Prints one `N passed, M failed` line for all;
# exits non-zero if any check failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"

log() { printf '[run.sh] %s\n' "$*" >&2; }

# 1. Python venv with the pinned requirements (re-installed when they change).
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv at $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    log "installing $(grep -v '^#' "$HERE/requirements.txt" | xargs)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
    echo "$want" > "$stamp"
fi
# The switchyard package (app.py and live_app.py import switchyard.streamlit):
# the switchyard-gateway distribution at the root, editable.
"$VENV/bin/python" -c 'import switchyard' 2>/dev/null ||
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT"

# 2. Debian's Chromium (browsers cannot be downloaded by Playwright here).
if [[ ! -x /usr/bin/chromium ]]; then
    log "installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi

# 3. The gateway.
if [[ -n "${SWITCHYARD_BIN:-}" ]]; then
    log "using SWITCHYARD_BIN=$SWITCHYARD_BIN (no build)"
else
    log "building switchyard (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi

# 4. The tests: e2e.py (Streamlit behind the gateway), then client_e2e.py
# (client.js and the live console). Each writes `passed failed` to
# $E2E_COUNTS_FILE and prints a subtotal; the one `N passed, M failed` line
# at the end sums both. A script that dies without its counts (crash,
# timeout) counts as one failure.
cd "$ROOT"
counts="$(mktemp -d)"
trap 'rm -rf "$counts"' EXIT
total_passed=0
total_failed=0

run_script() {
    local name="$1" budget="$2"
    shift 2
    local rc=0 passed=0 failed=0 t0=$SECONDS
    log "running $name"
    if [[ "$budget" == 0 ]]; then
        E2E_COUNTS_FILE="$counts/$name" "$VENV/bin/python" "$HERE/$name" "$@" || rc=$?
    else
        # client_e2e.py turns SIGTERM into a clean exit (its gateways stop too).
        E2E_COUNTS_FILE="$counts/$name" timeout --kill-after=20 "$budget" \
            "$VENV/bin/python" "$HERE/$name" "$@" || rc=$?
    fi
    if [[ -s "$counts/$name" ]]; then
        read -r passed failed < "$counts/$name"
    fi
    if [[ $rc -ne 0 && $failed -eq 0 ]]; then
        echo "FAIL $name: exited with status $rc without reporting a failed check"
        failed=1
    elif [[ ! -s "$counts/$name" ]]; then
        echo "FAIL $name: exited without reporting its counts"
        failed=1
    fi
    log "$name: passed=$passed failed=$failed (exit $rc, $((SECONDS - t0))s)"
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
}

run_script e2e.py 0 "$@"
run_script client_e2e.py 300
run_script live_e2e.py 300
run_script replicas_e2e.py 400
# examples/railway as Railpack runs it: a fresh venv, pip install -r
# requirements.txt with the wheel ($SWITCHYARD_WHEEL or target/wheels/).
run_script railway_e2e.py 900

echo "$total_passed passed, $total_failed failed"
[[ $total_failed -eq 0 ]]
