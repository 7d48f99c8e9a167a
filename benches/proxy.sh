#!/usr/bin/env bash
# benches/proxy.sh — switchyard's reverse proxy, side by side with nginx.
#
# What it measures
#   Four targets (three with FLOOR=0), all on 127.0.0.1, all in front of the same tiny upstream
#   (an nginx with one worker answering `200 "hello from upstream\n"`):
#     direct      wrk -> upstream                    (no proxy at all)
#     nginx       wrk -> nginx reverse proxy -> upstream
#                 (tuned as an expert would: upstream keepalive 64, HTTP/1.1,
#                  Connection "", X-Forwarded-*, worker_processes auto)
#     switchyard  wrk -> switchyard (DASHBOARD_URL=upstream) -> upstream
#     hyper-floor wrk -> examples/hyper_floor.rs -> upstream: the cheapest
#                 proxy hyper 1 allows, on switchyard's threading (a loop
#                 per core) and nothing else (no tower stack, timers,
#                 forwarding headers, shared pool): what any gateway on the
#                 chosen stack pays, so the run shows how much of switchyard's
#                 distance to nginx is the stack's and how much is its own
#   For each target, each round:
#     * throughput:  wrk -t2 -c64 -d$DURATION        -> requests/s
#     * latency:     wrk -t1 -c1  -d$DURATION        -> p50 and p99, and the
#                    latency a proxy adds = its p50/p99 minus direct's
#     * CPU/request: utime+stime (/proc/PID/stat fields 14+15) of the proxy's
#                    own processes (nginx master + workers; switchyard's one
#                    process, all threads) before and after each run, divided
#                    by the number of requests wrk completed.
#   Targets are interleaved (and their order rotated) over ROUNDS rounds and
#   the median over rounds is reported per target and metric.
#
# Why the 1-connection runs are pinned to one CPU (PIN_1C, default on)
#   Unpinned, every hop of a lone request (wrk -> proxy -> upstream and
#   back) wakes a process on the other, idle, CPU. On this VM (cpuidle
#   governor haltpoll) that wake-up either lands inside the guest's poll
#   window or pays a halt/VM exit, so p50 at 1 connection was bimodal for
#   every target, direct included: ~20 us or ~100 us depending on the run,
#   not on the proxy. For the 1c runs only, wrk, the upstream and the proxy
#   under test (all threads of all their processes) are moved to one CPU
#   ($LAT_CPU) with taskset, the same way for direct, nginx and switchyard,
#   and moved back to all CPUs afterwards. The chain then never idles a
#   CPU: latency is the sum of the work each party does plus the context
#   switches between them, so "added p50" is the proxy's own path length
#   and it repeats within a few us. The 64c runs stay unpinned (the
#   throughput comparison is about sharing the machine). PIN_1C=0 restores
#   the old unpinned behaviour.
#
# Why CPU/request is the figure to trust here
#   This machine has 2 cores shared by wrk, the upstream, the proxy and
#   whatever else the host runs. Requests/s and latency mostly measure how the
#   scheduler splits those cores between the four parties (and neighbours'
#   noise): a proxy that is cheaper can still lose throughput because wrk or
#   the upstream got the core. CPU time charged to the proxy's own processes,
#   per request served, does not depend on who else was runnable; it is the
#   proxy's cost and it moves only a few percent between runs.
#
# Issue targets (printed as PASS/MISS, with the issue-12 table):
#   switchyard req/s >= 1.0x nginx's, CPU per request <= 1.0x nginx's,
#   added p50 at 1 connection <= nginx's.
#
# Usage: benches/proxy.sh            (ROUNDS=3 DURATION=5s WARMUP=1s PIN_1C=1)
#        ROUNDS=5 DURATION=10s benches/proxy.sh
#        SWITCHYARD_BIN=/path/to/switchyard benches/proxy.sh   (that binary, no build)
#        FLOOR=0 benches/proxy.sh      (without the hyper-floor target)
#        BASELINE_BIN=/path/to/older/switchyard benches/proxy.sh
#          adds a target, "baseline", measured in the same rounds:
#          the A/B for a change to the proxy path (build the old commit in a
#          git worktree; the machine's noise then hits both alike).
# Needs: Debian (installs wrk and nginx-light with apt-get if missing, as
# root), cargo, python3, curl. Loopback only; nothing leaves 127.0.0.1.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
PIN_1C=${PIN_1C:-1}
FLOOR=${FLOOR:-1}
LAT_CPU=${LAT_CPU:-0}
ALL_CPUS="0-$(( $(nproc) - 1 ))"
TARGET_RATIO=1.0      # switchyard req/s / nginx req/s, at least (issue 12)
TARGET_CPU_RATIO=1.0  # switchyard CPU per request / nginx's, at most (issue 12)
BODY="hello from upstream"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "proxy.sh: error: $*" >&2; exit 1; }
say() { echo "proxy.sh: $*" >&2; }

# ---------------------------------------------------------------- tools
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ -n "$(find_nginx)" ] || need+=(nginx)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
[ "$PIN_1C" = 0 ] || command -v taskset >/dev/null 2>&1 || need+=(util-linux)
[ ${#need[@]} -eq 0 ] || install_missing "${need[@]}"
NGINX=$(find_nginx)
[ -n "$NGINX" ] || die "nginx not found after install"
command -v cargo >/dev/null 2>&1 || die "cargo not found"

# ---------------------------------------------------------------- build
if [ -n "${SWITCHYARD_BIN:-}" ]; then
    BIN="$SWITCHYARD_BIN"
else
    say "building switchyard (release)"
    cargo build --release --quiet
    BIN="$ROOT/target/release/switchyard"
fi
[ -x "$BIN" ] || die "$BIN missing after build"
if [ "$FLOOR" != 0 ]; then
    cargo build --release --quiet --example hyper_floor
    FLOOR_BIN="$ROOT/target/release/examples/hyper_floor"
    [ -x "$FLOOR_BIN" ] || die "$FLOOR_BIN missing after build"
fi

# ---------------------------------------------------------------- scratch + cleanup
TMP=$(mktemp -d /tmp/switchyard-bench.XXXXXX)
chmod 755 "$TMP"   # nginx workers run as an unprivileged user when we are root
PIDS=()            # every process we start: nginx masters and switchyard

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ] && [ -z "${KEEP_TMP:-}" ]; then
        for log in "$TMP"/*.log; do
            [ -s "$log" ] && { echo "--- $log (tail)" >&2; tail -n 20 "$log" >&2; }
        done
    fi
    [ -n "${KEEP_TMP:-}" ] && say "kept $TMP" || rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- ports
read -r UP NGX SY BASE FLR < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(5):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
EOF
)

# ---------------------------------------------------------------- nginx configs
# Temp paths into $TMP, so nothing under /var is needed or touched; only for
# the modules this nginx build has.
nginx_build=$("$NGINX" -V 2>&1)
temp_paths="client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy;"
for m in fastcgi uwsgi scgi; do
    grep -q -- "--without-http_${m}_module" <<<"$nginx_build" || temp_paths+=" ${m}_temp_path $TMP/$m;"
done

cat >"$TMP/upstream.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/upstream.pid;
error_log $TMP/upstream.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp_paths
    keepalive_timeout 65;
    keepalive_requests 100000;
    default_type text/plain;
    server {
        listen 127.0.0.1:$UP;
        location / { return 200 "$BODY\n"; }
    }
}
EOF

cat >"$TMP/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $TMP/nginx.pid;
error_log $TMP/nginx.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp_paths
    keepalive_timeout 65;
    keepalive_requests 100000;
    upstream backend {
        server 127.0.0.1:$UP;
        keepalive 64;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$NGX;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF

start_nginx() { # name
    "$NGINX" -t -q -p "$TMP" -e "$TMP/$1.error.log" -c "$TMP/$1.conf" \
        || die "nginx rejected $TMP/$1.conf"
    "$NGINX" -p "$TMP" -e "$TMP/$1.error.log" -c "$TMP/$1.conf" \
        >>"$TMP/$1.error.log" 2>&1 &
    PIDS+=($!)
    eval "${1^^}_PID=$!"
}

wait_for() { # url what [grep-pattern]
    local url=$1 what=$2 pattern=${3:-} body
    for _ in $(seq 150); do
        if body=$(curl -sf --max-time 1 "$url" 2>/dev/null); then
            [ -z "$pattern" ] || grep -q "$pattern" <<<"$body" && return 0
        fi
        sleep 0.2
    done
    die "$what did not come up at $url (last answer: ${body:-none})"
}

say "upstream :$UP  nginx :$NGX  switchyard :$SY  (scratch $TMP)"
start_nginx upstream
wait_for "http://127.0.0.1:$UP/" "upstream nginx"
start_nginx nginx
wait_for "http://127.0.0.1:$NGX/" "nginx proxy"

PORT=$SY HOST=127.0.0.1 DASHBOARD_URL="http://127.0.0.1:$UP" RUST_LOG=warn \
    "$BIN" >>"$TMP/switchyard.log" 2>&1 &
SWITCHYARD_PID=$!
PIDS+=("$SWITCHYARD_PID")
wait_for "http://127.0.0.1:$SY/health" "switchyard" '"upstream":"up"'

declare -A PORT_OF=([direct]=$UP [nginx]=$NGX [switchyard]=$SY [baseline]=$BASE [hyper-floor]=$FLR)
TARGETS=(direct nginx switchyard)
if [ "$FLOOR" != 0 ]; then
    PORT=$FLR HOST=127.0.0.1 DASHBOARD_URL="http://127.0.0.1:$UP" \
        "$FLOOR_BIN" >>"$TMP/hyper-floor.log" 2>&1 &
    FLOOR_PID=$!
    PIDS+=("$FLOOR_PID")
    wait_for "http://127.0.0.1:$FLR/health" "hyper-floor" '"upstream":"up"'
    TARGETS+=(hyper-floor)
fi
if [ -n "${BASELINE_BIN:-}" ]; then
    [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not executable"
    PORT=$BASE HOST=127.0.0.1 DASHBOARD_URL="http://127.0.0.1:$UP" RUST_LOG=warn \
        "$BASELINE_BIN" >>"$TMP/baseline.log" 2>&1 &
    BASELINE_PID=$!
    PIDS+=("$BASELINE_PID")
    wait_for "http://127.0.0.1:$BASE/health" "baseline switchyard" '"upstream":"up"'
    TARGETS+=(baseline)
fi

# ---------------------------------------------------------------- sanity
for t in "${TARGETS[@]}"; do
    got=$(curl -sS --max-time 5 -w '\n%{http_code}' "http://127.0.0.1:${PORT_OF[$t]}/") \
        || die "$t: request failed"
    code=${got##*$'\n'}
    body=${got%$'\n'*}
    [ "$code" = 200 ] && [ "$body" = "$BODY"$'\n' ] \
        || die "$t: expected 200 \"$BODY\\n\", got $code \"$body\""
done
say "sanity: all ${#TARGETS[@]} targets answer 200 \"$BODY\""

# ---------------------------------------------------------------- measuring
# PIDs whose CPU counts for a target: the proxy's own processes.
proc_pids() { # target
    case $1 in
        direct) echo "$UPSTREAM_PID" $(pgrep -P "$UPSTREAM_PID" || true) ;;
        nginx) echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true) ;;
        switchyard) echo "$SWITCHYARD_PID" ;;
        baseline) echo "$BASELINE_PID" ;;
        hyper-floor) echo "$FLOOR_PID" ;;
    esac
}
# utime+stime in clock ticks summed over pids (comm may hold spaces: cut at ')').
cpu_ticks() { # pids...
    local total=0 pid rest f
    for pid in "$@"; do
        rest=$(cat "/proc/$pid/stat" 2>/dev/null) || die "process $pid vanished"
        rest=${rest##*) }
        # after "pid (comm) " the fields start at 3: utime (14) and stime (15)
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
RESULTS="$TMP/results.tsv"
: >"$RESULTS"

# Moves every thread of the given processes to the given CPU list.
pin() { # cpus pids...
    local cpus=$1 pid
    shift
    for pid in "$@"; do taskset -a -p -c "$cpus" "$pid" >/dev/null || die "taskset $pid failed"; done
}
# Every process of the chain for a target: the upstream, and the proxy if any.
chain_pids() { # target
    proc_pids direct
    [ "$1" = direct ] || proc_pids "$1"
}

# One wrk run; appends "target kind round rps requests p50_us p99_us cpu_us_per_req".
run_wrk() { # target kind(64c|1c) round
    local t=$1 kind=$2 round=$3 port=${PORT_OF[$1]} out pids before after
    local args=(-t"$THREADS" -c"$CONNS") wrap=() chain=()
    [ "$kind" = 1c ] && args=(-t1 -c1)
    if [ "$kind" = 1c ] && [ "$PIN_1C" != 0 ]; then
        read -r -a chain <<<"$(chain_pids "$t")"
        pin "$LAT_CPU" "${chain[@]}"
        wrap=(taskset -c "$LAT_CPU")
    fi
    read -r -a pids <<<"$(proc_pids "$t")"
    before=$(cpu_ticks "${pids[@]}")
    out="$TMP/wrk.$t.$kind.$round.txt"
    "${wrap[@]}" wrk "${args[@]}" -d"$DURATION" --latency "http://127.0.0.1:$port/" >"$out"
    after=$(cpu_ticks "${pids[@]}")
    [ ${#chain[@]} -eq 0 ] || pin "$ALL_CPUS" "${chain[@]}"
    python3 - "$out" "$t" "$kind" "$round" "$before" "$after" "$CLK_TCK" >>"$RESULTS" <<'EOF' \
        || die "bad wrk run ($out):"$'\n'"$(cat "$out")"
import re, sys
path, t, kind, rnd, before, after, hz = sys.argv[1:]
out = open(path).read()
unit = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
def pct(p):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s|m|h)\s*$" % p, out, re.M)
    return float(m.group(1)) * unit[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
reqs = int(re.search(r"(\d+) requests in", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
if bad:
    sys.exit("%s %s: %s non-2xx responses" % (t, kind, bad.group(1)))
errs = re.search(r"Socket errors:.*", out)
if errs:
    print("proxy.sh: warning: %s %s round %s: %s" % (t, kind, rnd, errs.group(0)), file=sys.stderr)
cpu_us = (int(after) - int(before)) / int(hz) * 1e6 / reqs
print(t, kind, rnd, rps, reqs, pct(50), pct(99), cpu_us, sep="\t")
EOF
    tail -n1 "$RESULTS" | awk -F'\t' '{printf "proxy.sh: round %s %-10s %-3s %9.0f req/s  p50 %7.1f us  p99 %8.1f us  cpu %6.2f us/req\n", $3, $1, $2, $4, $6, $7, $8}' >&2
}

say "warm-up ($WARMUP per target)"
for t in "${TARGETS[@]}"; do
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:${PORT_OF[$t]}/" >/dev/null
done

say "measuring: $ROUNDS rounds x ${#TARGETS[@]} targets x (${CONNS}c + 1c) x $DURATION"
for round in $(seq "$ROUNDS"); do
    # rotate the order each round so no target always runs first or last
    order=()
    for i in "${!TARGETS[@]}"; do
        order+=("${TARGETS[$(( (i + round - 1) % ${#TARGETS[@]} ))]}")
    done
    for t in "${order[@]}"; do
        run_wrk "$t" 64c "$round"
        run_wrk "$t" 1c "$round"
    done
done

for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a server (pid $pid) died during the benchmark"
done

# ---------------------------------------------------------------- report
echo
echo "# $0 ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS THREADS=$THREADS PIN_1C=$PIN_1C — $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# $(nproc) cores, $("$NGINX" -v 2>&1 | sed 's/.*version: //'), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}'), switchyard $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'); medians over $ROUNDS rounds"
python3 - "$RESULTS" "$TARGET_RATIO" "$TARGET_CPU_RATIO" <<'EOF'
import statistics, sys
path, target_ratio, target_cpu_ratio = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [l.split("\t") for l in open(path).read().splitlines() if l]
def med(t, kind, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == t and r[1] == kind)
T = [t for t in ["direct", "nginx", "switchyard", "hyper-floor", "baseline"] if any(r[0] == t for r in rows)]
m = {t: dict(rps=med(t, "64c", 3), cpu=med(t, "64c", 7), cpu1=med(t, "1c", 7),
             p50=med(t, "1c", 5), p99=med(t, "1c", 6)) for t in T}
d = m["direct"]
print("%-12s %11s %13s %11s %13s %10s %10s %13s %13s" % (
    "target", "req/s(64c)", "ratio/direct", "cpu_us/req", "cpu_us/req1c",
    "p50_1c_us", "p99_1c_us", "added_p50_us", "added_p99_us"))
for t in T:
    x = m[t]
    added = ("%13s %13s" % ("-", "-")) if t == "direct" else \
        "%13.1f %13.1f" % (x["p50"] - d["p50"], x["p99"] - d["p99"])
    print("%-12s %11.0f %13.2f %11.2f %13.2f %10.1f %10.1f %s" % (
        t, x["rps"], x["rps"] / d["rps"], x["cpu"], x["cpu1"], x["p50"], x["p99"], added))
print("(cpu_us/req for direct is the upstream nginx's own cost; for proxies, the proxy's only)")
s, n = m["switchyard"], m["nginx"]
sa, na = s["p50"] - d["p50"], n["p50"] - d["p50"]
ratio = lambda a, b: a / b if b else float("inf")
print("switchyard/nginx: throughput %.2f, cpu/req %.2f, added p50 %.2f" % (
    ratio(s["rps"], n["rps"]), ratio(s["cpu"], n["cpu"]), ratio(sa, na)))
floor = m.get("hyper-floor")
if floor:
    fa = floor["p50"] - d["p50"]
    print("hyper-floor/nginx: throughput %.2f, cpu/req %.2f, added p50 %.2f (the stack's own floor)" % (
        ratio(floor["rps"], n["rps"]), ratio(floor["cpu"], n["cpu"]), ratio(fa, na)))
    print("switchyard/hyper-floor: throughput %.2f, cpu/req %.2f, added p50 %.2f (what switchyard adds)" % (
        ratio(s["rps"], floor["rps"]), ratio(s["cpu"], floor["cpu"]), ratio(sa, fa)))
if "baseline" in m:
    b = m["baseline"]
    print("switchyard/baseline: throughput %.2f, cpu/req %.2f, added p50 %.2f" % (
        ratio(s["rps"], b["rps"]), ratio(s["cpu"], b["cpu"]), ratio(sa, b["p50"] - d["p50"])))
verdict = lambda ok: "PASS" if ok else "MISS"
print()
print("## issue 12: switchyard against nginx, this run")
print("%-32s %12s %12s %8s %10s %s" % ("metric", "switchyard", "nginx", "ratio", "target", "verdict"))
rows12 = [
    ("proxy req/s at %s connections" % "64", s["rps"], n["rps"], ">= %.1fx" % target_ratio,
     s["rps"] >= target_ratio * n["rps"], "%.0f", floor and floor["rps"]),
    ("proxy CPU us per request", s["cpu"], n["cpu"], "<= %.1fx" % target_cpu_ratio,
     s["cpu"] <= target_cpu_ratio * n["cpu"], "%.2f", floor and floor["cpu"]),
    ("added p50 us at 1 connection", sa, na, "<= 1.0x", sa <= na, "%.1f",
     floor and floor["p50"] - d["p50"]),
]
import os
table = open(os.environ["TABLE_TSV"], "a") if os.environ.get("TABLE_TSV") else None
for name, mine, theirs, target, ok, fmt, floor_value in rows12:
    print("%-32s %12s %12s %7.2fx %10s %s" % (name, fmt % mine, fmt % theirs, ratio(mine, theirs), target, verdict(ok)))
    also = ("hyper floor " + fmt % floor_value) if floor_value is not None else ""
    if table:
        table.write("\t".join([name, fmt % mine, "nginx", fmt % theirs, "%.2fx" % ratio(mine, theirs),
                                target.replace("x", "x nginx"), verdict(ok), also]) + "\n")
print("target: req/s >= %.1fx nginx         %s (%.2fx)" % (target_ratio, verdict(s["rps"] >= target_ratio * n["rps"]), ratio(s["rps"], n["rps"])))
print("target: cpu/req <= %.1fx nginx       %s (%.2fx)" % (target_cpu_ratio, verdict(s["cpu"] <= target_cpu_ratio * n["cpu"]), ratio(s["cpu"], n["cpu"])))
print("target: added p50 (1c) <= nginx's    %s (%.1f us vs %.1f us)" % (verdict(sa <= na), sa, na))
EOF
