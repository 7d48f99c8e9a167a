#!/usr/bin/env bash
# End-to-end test: a real Streamlit app behind switchyard, driven by headless
# Chromium through Playwright. Installs what it needs, builds the gateway,
# runs tests/e2e/e2e.py. Exits non-zero if any check failed.
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

# 4. The test itself.
log "running e2e.py"
cd "$ROOT"
exec "$VENV/bin/python" "$HERE/e2e.py" "$@"
