#!/usr/bin/env bash
# Autobahn conformance of the broadcaster's own WebSocket code: builds the
# echo server (examples/autobahn_echo.rs: the gateway's handshake, socket
# and codec; 16 MiB message limit for section 9), runs kosoku (a native
# runner of the Autobahn TestSuite's case files, from PyPI, in its own venv
# here) against it with every case, prints kosoku's summary and the
# per-section counts, and fails on any case worse than
# tests/autobahn/expected-results.json (or any FAILED case). A better result
# is recorded with UPDATE_EXPECTED=1 tests/autobahn/run.sh (commit the
# file). Takes about 30 s once built.
set -euo pipefail
cd "$(dirname "$0")/../.."

here=tests/autobahn
venv="$here/.venv"
out=target/autobahn
kosoku_version=0.1.0

if ! "$venv/bin/kosoku" --help >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "kosoku==${kosoku_version}"
fi

cargo build --quiet --example autobahn_echo
rm -rf "$out"
mkdir -p "$out"

target/debug/examples/autobahn_echo 127.0.0.1:0 >"$out/echo.log" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true; wait "$echo_pid" 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 100); do
  addr="$(sed -n 's/^listening on //p' "$out/echo.log")"
  [[ -n "$addr" ]] && break
  kill -0 "$echo_pid" 2>/dev/null || { cat "$out/echo.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$addr" ]] || { echo "autobahn_echo did not start" >&2; exit 1; }

started=$SECONDS
# kosoku exits 1 whenever a case does not pass, which the compression cases
# (12, 13: UNIMPLEMENTED) never do; the verdicts are judged below.
"$venv/bin/kosoku" --mode fuzzingclient -o "$out/reports" "$addr" >"$out/kosoku.log" 2>&1 || true
echo "kosoku: $(grep -E '^(wrote reports|[0-9]+ of [0-9]+ cases failed|[0-9]+ cases passed)' "$out/kosoku.log" | tr '\n' ' ')($((SECONDS - started)) s; full log: $out/kosoku.log)"
echo "(kosoku counts every case that is not OK, NON-STRICT or INFORMATIONAL as failed, UNIMPLEMENTED included; the verdicts are judged below)"
[[ -f "$out/reports/index.json" ]] || { tail -n 40 "$out/kosoku.log" >&2; exit 1; }

update=()
[[ "${UPDATE_EXPECTED:-}" == 1 ]] && update=(--update)
python3 "$here/compare.py" "$out/reports/index.json" "$here/expected-results.json" "${update[@]}"
