#!/usr/bin/env bash
# CI for the portable wheel: builds it once (clients/python/wheel.sh, reused
# by later steps), checks its manylinux tag with auditwheel and its contents,
# installs it into a fresh venv whose PATH has nothing from target/, and runs
# what a user runs first: `switchyard --version`, `python -m switchyard
# --version`, the package's import and find_switchyard_bin(). Checks that the
# plain install pulls no Streamlit, and prints the wheel's size and the time
# from `pip install` to a gateway answering /health.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TOOLS="$ROOT/target/wheel-tools"

wheel="$("$HERE/wheel.sh")"
echo "wheel: $wheel ($(stat -c %s "$wheel") bytes)"

echo "== auditwheel show"
audit="$("$TOOLS/bin/auditwheel" show "$wheel")"
echo "$audit"
tr -s ' \n' ' ' <<<"$audit" \
    | grep -q 'consistent with the following platform tag: "manylinux_2_17_x86_64"' \
    || { echo "the wheel is not manylinux_2_17_x86_64 (manylinux2014)" >&2; exit 1; }

echo "== contents"
"$TOOLS/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
data = next(n.split("/")[0] for n in names if n.endswith(".data/scripts/switchyard"))
need = [f"{data}/scripts/switchyard", "switchyard/__init__.py", "switchyard/__main__.py",
        "switchyard/py.typed", "switchyard/streamlit/__init__.py"]
missing = [n for n in need if n not in names]
js = [n for n in names if n.startswith("switchyard/streamlit/") and n.endswith(".js")]
if missing or not js:
    sys.exit(f"wheel lacks {missing or 'switchyard/streamlit/*.js'}")
print(f"{len(names)} files, binary at {data}/scripts/switchyard")
PY

work="$(mktemp -d)"
gateway=""
cleanup() {
    if [[ -n "$gateway" ]]; then kill -TERM "$gateway" 2>/dev/null || true; wait "$gateway" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
python3 -m venv "$work/venv"
# What a user's shell has: the venv, the system; nothing from this repo.
export PATH="$work/venv/bin:/usr/local/bin:/usr/bin:/bin"
export VIRTUAL_ENV="$work/venv"
unset SWITCHYARD_BIN PYTHONPATH
cd "$work"

echo "== pip install <wheel> into a fresh venv, then a serving gateway"
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
t0=$(date +%s.%N)
pip install --quiet --disable-pip-version-check "$wheel"
t1=$(date +%s.%N)
PORT="$port" HOST=127.0.0.1 LOG_FORMAT=json switchyard >"$work/gateway.log" 2>&1 &
gateway=$!
until curl -fsS -o /dev/null "http://127.0.0.1:$port/health"; do
    if ! kill -0 "$gateway" 2>/dev/null; then cat "$work/gateway.log" >&2; echo "gateway exited" >&2; exit 1; fi
    if (($(date +%s) - ${t1%.*} > 30)); then echo "no /health in 30 s" >&2; exit 1; fi
    sleep 0.05
done
t2=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" \
    'BEGIN { printf "pip install: %.1f s; start to /health 200: %.2f s; total %.1f s\n", b - a, c - b, c - a }'
kill -TERM "$gateway"
status=0
wait "$gateway" || status=$?
gateway=""
[[ $status -eq 0 ]] || { cat "$work/gateway.log" >&2; echo "gateway exited $status after SIGTERM" >&2; exit 1; }

echo "== the command, python -m, the import"
[[ "$(command -v switchyard)" == "$work/venv/bin/switchyard" ]] \
    || { echo "switchyard resolves to $(command -v switchyard), not the venv's" >&2; exit 1; }
switchyard --version
python -m switchyard --version
python -c "import switchyard; print(switchyard.find_switchyard_bin())"
[[ "$(python -c 'import switchyard; print(switchyard.find_switchyard_bin())')" == "$work/venv/bin/switchyard" ]]
[[ "$(python -m switchyard --version)" == "$(switchyard --version)" ]]

echo "== no Streamlit without the extra"
if pip show --quiet streamlit 2>/dev/null; then
    echo "streamlit was installed without the [streamlit] extra" >&2
    exit 1
fi
echo "streamlit: not installed (as it should be)"
echo "wheel checks passed"
