#!/usr/bin/env bash
# benches/proxy-instructions.sh — user-space instructions per proxied
# request, switchyard against nginx, counted by valgrind (callgrind).
#
# Why: on a shared 2-core VM wall-clock A/B runs of the proxy differ by up to
# 12% between two identical binaries (docs/benchmarks.md); an instruction
# count does not depend on the neighbours. The kernel's share is the same
# for both proxies (the same four syscalls per request, `benches/proxy.sh`
# header), so this count is where the two differ.
#
# What it does: one nginx upstream answering `200 "hello from upstream\n"`,
# then, for nginx (tuned as in benches/proxy.sh: upstream keepalive, HTTP/1.1,
# X-Forwarded-*) and for switchyard (DASHBOARD_URL=upstream), each under
# callgrind: N1 and then N2 GET requests over one keep-alive connection
# (python3's http.client). Instructions per request = (total at N2 - total at
# N1) / (N2 - N1), so start-up and shutdown cancel out. The same for
# examples/hyper_floor.rs, the cheapest proxy hyper 1 allows (see
# benches/proxy.sh): the part of switchyard's count any gateway on the chosen
# stack pays (FLOOR=0 leaves it out). For switchyard it also
# prints the per-request self cost grouped by where the code comes from
# (crate, or switchyard's own source file; std/core code inlined into a
# function counts for that function's crate).
#
# Usage: benches/proxy-instructions.sh            (N1=1000 N2=3000, ~3 minutes)
#        SWITCHYARD_BIN=path/to/switchyard N1=2000 N2=6000 benches/proxy-instructions.sh
# Needs: Debian (installs valgrind and nginx with apt-get if missing, as root),
# cargo (unless SWITCHYARD_BIN is given), python3, curl. Loopback only.
set -euo pipefail

N1=${N1:-1000}
N2=${N2:-3000}
FLOOR=${FLOOR:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "proxy-instructions.sh: error: $*" >&2; exit 1; }
say() { echo "proxy-instructions.sh: $*" >&2; }

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
[ -n "$(find_nginx)" ] || need+=(nginx)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ ${#need[@]} -eq 0 ] || install_missing "${need[@]}"
NGINX=$(find_nginx)
[ -n "$NGINX" ] || die "nginx not found after install"

if [ -z "${SWITCHYARD_BIN:-}" ]; then
    say "building switchyard (release)"
    cargo build --release --quiet
    SWITCHYARD_BIN=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/switchyard
fi
[ -x "$SWITCHYARD_BIN" ] || die "no switchyard binary at $SWITCHYARD_BIN"
if [ "$FLOOR" != 0 ]; then
    say "building examples/hyper_floor.rs (release)"
    cargo build --release --quiet --example hyper_floor
    FLOOR_BIN=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/hyper_floor
    [ -x "$FLOOR_BIN" ] || die "no hyper_floor binary at $FLOOR_BIN"
fi

TMP=$(mktemp -d /tmp/switchyard-instr.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
UP=$(free_port)
PX=$(free_port)
SY=$(free_port)

# nginx_conf NAME SERVER: one process (master_process off, so callgrind
# sees the worker), no access log, keep-alive as in benches/proxy.sh.
nginx_conf() {
    cat >"$TMP/$1.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $TMP/$1.pid;
error_log $TMP/$1.error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP;
    uwsgi_temp_path $TMP; scgi_temp_path $TMP;
    keepalive_timeout 65;
    keepalive_requests 100000;
    $2
}
EOF
}
nginx_conf upstream "server { listen 127.0.0.1:$UP; location / { return 200 \"hello from upstream\\n\"; } }"
# The proxy as benches/proxy.sh tunes it.
nginx_conf nginx "upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 100000; }
    server {
        listen 127.0.0.1:$PX;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }"
cat >"$TMP/client.py" <<'EOF'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("GET", "/", headers={"User-Agent": "bench", "Accept": "*/*"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit("got %d" % response.status)
EOF

wait_for() { # url what [body-substring]
    for _ in $(seq 300); do
        if body=$(curl -sf "$1" 2>/dev/null) && [[ "$body" == *"${3:-}"* ]]; then return 0; fi
        sleep 0.1
    done
    die "$2 did not come up at $1"
}

"$NGINX" -p "$TMP" -c "$TMP/upstream.conf" -e "$TMP/upstream.error.log" &
PIDS+=($!)
wait_for "http://127.0.0.1:$UP/" "upstream nginx"

# count NAME PORT N: runs the proxy under callgrind, sends N requests, stops
# it; prints the program's total instructions.
count() {
    local name=$1 port=$2 n=$3 out="$TMP/$1.$3.callgrind" pid
    if [ "$name" = nginx ]; then
        valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx.error.log" 2>>"$TMP/valgrind.log" &
        pid=$!
        wait_for "http://127.0.0.1:$port/" "nginx under callgrind"
    else
        local bin=$SWITCHYARD_BIN
        [ "$name" = hyper-floor ] && bin=$FLOOR_BIN
        PORT=$port HOST=127.0.0.1 DASHBOARD_URL="http://127.0.0.1:$UP" RUST_LOG=warn \
            valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$bin" >>"$TMP/$name.log" 2>>"$TMP/valgrind.log" &
        pid=$!
        wait_for "http://127.0.0.1:$port/health" "$name under callgrind" '"upstream":"up"'
    fi
    python3 "$TMP/client.py" "$port" "$n" || die "$name: requests failed"
    if [ "$name" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" || true
    callgrind_annotate "$out" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,
}

declare -A PER_REQ
NAMES=(nginx switchyard)
[ "$FLOOR" != 0 ] && NAMES+=(hyper-floor)
for name in "${NAMES[@]}"; do
    port=$PX
    [ "$name" != nginx ] && port=$SY
    say "$name: $N1 then $N2 requests under callgrind"
    a=$(count "$name" "$port" "$N1")
    b=$(count "$name" "$port" "$N2")
    [ -n "$a" ] && [ -n "$b" ] || die "$name: no callgrind totals (see $TMP/valgrind.log)"
    PER_REQ[$name]=$(( (b - a) / (N2 - N1) ))
done

echo
echo "## user-space instructions per proxied request (callgrind, one keep-alive connection)"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), switchyard $(git describe --always --dirty 2>/dev/null || echo '?'), $("$NGINX" -v 2>&1 | sed 's/.*version: //'), requests $N1 and $N2"
printf '%-12s %10s\n' proxy "instr/req"
printf '%-12s %10s\n' nginx "${PER_REQ[nginx]}"
printf '%-12s %10s\n' switchyard "${PER_REQ[switchyard]}"
[ "$FLOOR" != 0 ] && printf '%-12s %10s\n' hyper-floor "${PER_REQ[hyper-floor]}"
python3 -c "import sys; a,b=map(int,sys.argv[1:]); print('switchyard / nginx: %.2fx' % (b/a))" \
    "${PER_REQ[nginx]}" "${PER_REQ[switchyard]}"
if [ "$FLOOR" != 0 ]; then
    python3 -c "import sys; n,s,f=map(int,sys.argv[1:]); print('hyper-floor / nginx: %.2fx (the stack); switchyard - hyper-floor: %d instructions (its own)' % (f/n, s-f))" \
        "${PER_REQ[nginx]}" "${PER_REQ[switchyard]}" "${PER_REQ[hyper-floor]}"
fi

echo
echo "## switchyard: self cost per request by origin, run with $N2 requests"
callgrind_annotate --threshold=100 "$TMP/switchyard.$N2.callgrind" 2>/dev/null >"$TMP/annotated"
python3 - "$TMP/annotated" "$N2" <<'EOF'
import collections, re, sys
text = open(sys.argv[1]).read()
n = int(sys.argv[2])
section = text.split("file:function", 1)[1].split("-- Auto-annotated source", 1)[0]
cost = collections.Counter()
for line in section.splitlines():
    m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S+?):(\S+)", line)
    if not m:
        continue
    count, path, function = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
    crate = re.search(r"index\.crates\.io-[^/]+/([A-Za-z_\-]+?)-\d", path)
    if crate:
        origin = crate.group(1)
    elif ("/src/" in path or path.startswith("src/")) and "/rustc/" not in path:
        # callgrind_annotate shortens paths under the current directory.
        origin = "switchyard (" + path.split("src/", 1)[1] + ")"
    elif "malloc" in path:
        origin = "libc malloc/free"
    elif "/string/" in path:
        origin = "libc memcpy/memmove"
    elif "/rustc/" in path:
        # std/core code inlined into a function: counted with that
        # function's crate.
        caller = re.match(r"<?([A-Za-z_0-9]+)::", function)
        origin = caller.group(1) if caller else "std/core"
        if origin == "switchyard":
            origin = "switchyard (std/core inlined)"
        origin = origin.replace("_", "-") if origin in ("hyper_util", "http_body_util") else origin
    else:
        origin = "libc other"
    cost[origin] += count
total = sum(cost.values())
ours = sum(v for k, v in cost.items() if k.startswith("switchyard"))
for origin, count in cost.most_common(14):
    print("%-44s %7.0f  %5.1f%%" % (origin, count / n, 100 * count / total))
print("%-44s %7.0f  %5.1f%%" % ("switchyard's own files, together", ours / n, 100 * ours / total))
EOF
