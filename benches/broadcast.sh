#!/usr/bin/env bash
# benches/broadcast.sh — switchyard's WebSocket broadcaster under load.
#
# Runs the broadcaster's scenarios, each as its own run of the load generator
# benches/loadgen/ (`cargo bench --bench loadgen -- <args>`), which starts
# its own switchyard on a free 127.0.0.1 port, connects the clients from
# 127.A.B.x source addresses, publishes on an open-loop schedule, measures,
# and stops the server again. Every run prints one table with its command
# line; a summary of the PASS/MISS lines follows at the end.
#
#   1. 10,000 clients x 10 events/s of 256 B, 20 s
#        targets: zero loss, no publish waits, server <= 8 us CPU per delivered message
#   2. 10,000 clients x 100 events/s of 256 B, 20 s
#        targets: zero loss, no publish waits, server <= 4 us CPU per delivered message
#   3. 1,000 clients x 100 events/s of 256 B, 20 s
#        targets: zero loss, publish->receive p99 <= 50 ms
#   4. idle connections, two sub-runs (SCENARIOS="4a" or "4b" runs one):
#      4a. 15,000 idle connections, tiny hello
#        target: server RSS per connection <= 4 KiB
#      4b. 1,000 idle connections after a 60 KB hello (20 retained topics of
#          3 KB published before the clients connect)
#        target: server RSS per connection <= 8 KiB
#   5. 100 clients x 200 events/s of 4 KiB, 1 client stalls half way, 20 s
#        targets: the others' p99 during the stall <= 1.5x before, the stalled
#        client closed with 1008, server RSS growth during the stall
#        < CLIENT_QUEUE x frame size
#   6. hostile: 1,000 clients x 100 events/s of 256 B, two phases of
#      max(10, DURATION/2) s on one server: quiet, then the same while one
#      anonymous WebSocket client (no Origin) writes 30 subscribe frames of
#      3,600 distinct patterns (flood/<n>/+/x) as fast as it can
#        targets: publish RTT p99 under flood <= 2x quiet with every publish
#        answered; zero loss for the 1,000 clients. The table also says how
#        the flooder was answered (subscribed / error frames, closed or not).
#
#
# SCENARIOS=issue12: issue 12's side-by-side comparison with two peer servers
# (benches/peers/: uWebSockets.js and Node `ws`, speaking the subset of the
# protocol the load generator uses; see the header of each), run by the same
# load generator and measured the same way (the server process's own
# /proc/PID/stat CPU and VmRSS). For each measurement, switchyard, uWS and
# Node ws run back to back in this invocation:
#   a. 10,000 clients x 10 ev/s x 256 B, DURATION s: server CPU per delivered
#      message, publish->receive p99, loss. Latency runs from the publish
#      request's send; a publish that waited for one of the 4 connections (a
#      server that answers only after its fan-out) did not start its clock
#      while waiting, so its p99 compares fairly only when none had to wait
#   b. 10,000 clients x 100 ev/s x 256 B, DURATION s: delivered messages/s
#      over publishing + drain. The publisher has 4 keep-alive connections, so
#      a server that falls behind slows the schedule down; publishing stops at
#      3 x DURATION (--cutoff) whatever is left, so a server below a third of
#      the offered rate is measured over that window (Node ws, here)
#   c. IDLE_CONNS (15,000) idle connections after a tiny hello: server RSS per
#      connection
#   d. accept rate: ACCEPT_CONNS (15,000) WebSockets opened as fast as the
#      server takes them, ACCEPT_INFLIGHT (256) in flight, each counted at its
#      hello and kept open: connections/s and server CPU per connection; also
#      for examples/ws_floor.rs, the cheapest WebSocket accept hyper 1 allows
#      (hyper's upgrade, a fixed hello, the socket kept on its loop: none of
#      switchyard's checks, watchdog or subscription), the row's
#      "hyper floor": how much of switchyard's distance to uWS is the stack's
#      (FLOOR=0 leaves it out)
# then ONE table: rows = metrics, columns = switchyard, uWS, Node ws, the
# ratio switchyard/uWS, the target and PASS/MISS. About 6-9 minutes at
# DURATION=10. Needs node and npm;
# runs `npm ci` in benches/peers/ when its node_modules is missing.
# PEERS="switchyard uws" limits the servers (the table shows "-" for the rest).
# ROUNDS=3 repeats the whole interleaved sequence and the table shows each
# figure's median over the rounds (a noisy machine moves single runs a lot).
#
# What to trust: this machine has 2 cores, shared by the server, the load
# generator and anything else running. Each table shows the background load
# seen just before the run, both processes' CPU and how busy the machine
# was; CPU per delivered message is the server's own cost and moves least
# with the neighbours, while latency and "publishes that had to wait" depend
# on who got the cores. When the machine is saturated, the load generator's
# own CPU line says how much of it was the client side. Two more caveats:
# on loopback the kernel's receive path for the clients' sockets mostly runs
# inside the server's send syscalls (hence the user/sys split in the table),
# and the cost per message falls as load rises, because a client that is
# behind gets several events per write.
#
# The Redis backplane (several replicas, publish throughput) has its own
# script, benches/redis.sh, on the same load generator.
#
# Usage: benches/broadcast.sh                 (all six, 20 s each: ~5 minutes)
#        SCENARIOS="3 4" DURATION=10 benches/broadcast.sh
#        SCENARIOS=6 benches/broadcast.sh        (the hostile scenario alone)
#        SCENARIOS=4b benches/broadcast.sh       (the 60 KB hello alone)
#        SCENARIOS=issue12 DURATION=10 benches/broadcast.sh   (switchyard vs uWS vs Node ws)
# Needs: cargo; a hard fd limit of at least ~15,100 for scenario 4 and
# issue12 (the load generator raises its soft limit itself; the server
# inherits it); node and npm for issue12.
# Loopback only; nothing leaves 127.0.0.0/8.
set -euo pipefail

DURATION=${DURATION:-20}
# The stalled client must overflow CLIENT_QUEUE (1024 events = 5.1 s at
# 200/s, plus socket buffers) within the second half, and HISTORY_SIZE
# (1000 events) must be full before the stall, so its RSS growth is the
# stall's alone: scenario 5 runs at least 20 s whatever DURATION says.
STALL_DURATION=$(( DURATION > 20 ? DURATION : 20 ))
# Scenario 6 runs two phases (quiet, flood) of this many seconds each, plus
# up to 10 s more per phase when the server falls behind.
HOSTILE_PHASE=$(( DURATION / 2 > 10 ? DURATION / 2 : 10 ))
SCENARIOS=${SCENARIOS:-"1 2 3 4 5 6"}
# issue12 only
PEERS=${PEERS:-"switchyard uws ws"}
ROUNDS=${ROUNDS:-1}
IDLE_CONNS=${IDLE_CONNS:-15000}
ACCEPT_CONNS=${ACCEPT_CONNS:-15000}
ACCEPT_INFLIGHT=${ACCEPT_INFLIGHT:-256}
FLOOR=${FLOOR:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "broadcast.sh: error: $*" >&2; exit 1; }
say() { echo "broadcast.sh: $*" >&2; }

command -v cargo >/dev/null 2>&1 || die "cargo not found"

case " $SCENARIOS " in
    *" issue12 "*)
        command -v node >/dev/null 2>&1 ||
            die "node not found: SCENARIOS=issue12 runs the peer servers in benches/peers/ (Node.js >= 18 and npm)"
        for p in $PEERS; do
            case $p in switchyard|uws|ws) ;; *) die "unknown peer $p in PEERS (switchyard uws ws)" ;; esac
        done
        case $ROUNDS in ''|*[!0-9]*|0) die "ROUNDS must be a whole number >= 1" ;; esac
        if [ ! -d "$ROOT/benches/peers/node_modules" ]; then
            command -v npm >/dev/null 2>&1 ||
                die "npm not found: needed once to install benches/peers/ (npm ci)"
            say "installing the peer servers' packages (npm ci in benches/peers)"
            (cd "$ROOT/benches/peers" && npm ci --no-audit --no-fund >&2) ||
                die "npm ci in benches/peers failed"
        fi ;;
esac

# ---------------------------------------------------------------- build
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
build_loadgen

# Private copies, so a rebuild in this tree during the runs changes nothing.
TMP=$(mktemp -d /tmp/switchyard-broadcast.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cp "$ROOT/target/release/switchyard" "$TMP/switchyard"
case " $SCENARIOS " in
    *" issue12 "*)
        if [ "$FLOOR" != 0 ]; then
            cargo build --release --quiet --example ws_floor
            cp "$ROOT/target/release/examples/ws_floor" "$TMP/ws_floor"
        fi ;;
esac
cp "$LOADGEN" "$TMP/loadgen"
export SWITCHYARD_BIN="$TMP/switchyard"

hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 15100 ]; then
    say "warning: hard fd limit $hard < 15100: scenario 4 (15,000 connections) will fail"
fi

echo "# $0 DURATION=$DURATION SCENARIOS=\"$SCENARIOS\" — $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# $(nproc) cores, switchyard $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), load average $(cut -d' ' -f1-3 /proc/loadavg)"

SUMMARY="$TMP/summary"
: >"$SUMMARY"
status=0
RUNS=0

# run ID "description" loadgen-args...   (ID names the output file too)
run() {
    local n=$1 what=$2 out="$TMP/scenario$1.txt"
    shift 2
    # let the previous run's sockets and processes wind down first
    if [ "$RUNS" -gt 0 ]; then sleep 3; fi
    RUNS=$((RUNS + 1))
    echo
    echo "## scenario $n: $what"
    # the executable cargo bench runs; --bench is what `cargo bench` passes
    if "$TMP/loadgen" --bench --label "scenario $n: $what" "$@" >"$out" 2>"$out.err"; then
        cat "$out"
    else
        cat "$out"
        echo "scenario $n: the load generator failed:" >&2
        cat "$out.err" >&2
        echo "scenario $n: FAILED (see above)" >>"$SUMMARY"
        status=1
    fi
    grep '^target:' "$out" | sed "s/^target:/scenario $n:/" >>"$SUMMARY" || true
}

# ---------------------------------------------------------------- issue12

# loadgen arguments that pick the server
server_args() {
    case $1 in
        switchyard) ;;
        uws) echo "--server node:benches/peers/uws.js" ;;
        ws) echo "--server node:benches/peers/ws.js" ;;
    esac
}
server_name() {
    case $1 in switchyard) echo switchyard ;; uws) echo uWS ;; ws) echo "Node ws" ;; esac
}

# result KEY ID: the value of KEY in run ID's `result:` line, or nothing
result() {
    local f="$TMP/scenario$2.txt"
    [ -f "$f" ] || return 0
    grep '^result:' "$f" | tail -n1 | tr ' ' '\n' | sed -n "s/^$1=//p"
}

# results KEY ID: KEY of every round of ID, space-separated ("-" for a round
# without the figure)
results() {
    local r v out=""
    for r in $(seq "$ROUNDS"); do
        v=$(result "$1" "$2.r$r")
        out="$out ${v:--}"
    done
    echo "$out"
}

issue12() {
    local p r
    for r in $(seq "$ROUNDS"); do
        for p in $PEERS; do
            # shellcheck disable=SC2046 # word splitting of the server arguments is wanted
            run "12a.$p.r$r" "$(server_name "$p"): 10,000 clients x 10 ev/s x 256 B (round $r)" \
                $(server_args "$p") --clients 10000 --rate 10 --size 256 --duration "$DURATION" \
                --target-zero-loss
        done
        for p in $PEERS; do
            # shellcheck disable=SC2046
            run "12b.$p.r$r" "$(server_name "$p"): 10,000 clients x 100 ev/s x 256 B, saturated (round $r)" \
                $(server_args "$p") --clients 10000 --rate 100 --size 256 --duration "$DURATION" \
                --cutoff $((DURATION * 3))
        done
        for p in $PEERS; do
            # shellcheck disable=SC2046
            run "12c.$p.r$r" "$(server_name "$p"): $IDLE_CONNS idle connections, tiny hello (round $r)" \
                $(server_args "$p") --idle --clients "$IDLE_CONNS" --duration 5
        done
        for p in $PEERS; do
            # shellcheck disable=SC2046
            run "12d.$p.r$r" "$(server_name "$p"): accept rate, $ACCEPT_CONNS connections, $ACCEPT_INFLIGHT in flight (round $r)" \
                $(server_args "$p") --accept --clients "$ACCEPT_CONNS" \
                --connect-concurrency "$ACCEPT_INFLIGHT"
        done
        if [ "$FLOOR" != 0 ]; then
            SWITCHYARD_BIN="$TMP/ws_floor" run "12d.floor.r$r" \
                "hyper floor (examples/ws_floor.rs): accept rate, $ACCEPT_CONNS connections, $ACCEPT_INFLIGHT in flight (round $r)" \
                --accept --clients "$ACCEPT_CONNS" --connect-concurrency "$ACCEPT_INFLIGHT"
        fi
    done
    issue12_table
}

# One row: metric, the key and run of the figure, unit scale (values are
# divided by it), printf format, the comparison ("<=" or ">=" switchyard vs
# uWS: PASS/MISS; "info": ratio only; "-": neither) and the target's text.
# PASS/MISS rows also go to the summary.
row() {
    local metric=$1 key=$2 id=$3 scale=$4 fmt=$5 cmp=$6 target=$7
    local sy uw nw fl
    sy=$(results "$key" "$id.switchyard")
    uw=$(results "$key" "$id.uws")
    nw=$(results "$key" "$id.ws")
    fl=$(results "$key" "$id.floor")
    awk -v metric="$metric" -v sy="$sy" -v uw="$uw" -v nw="$nw" -v fl="$fl" -v scale="$scale" \
        -v fmt="$fmt" -v cmp="$cmp" -v target="$target" -v summary="$SUMMARY" \
        -v table="${TABLE_TSV:-}" '
        function num(v) { return v != "" && v != "-" && v != "nan" && v != "NaN" }
        function show(v) { return num(v) ? sprintf(fmt, v / scale) : "-" }
        # the median of the rounds that have a figure ("" if none has)
        function median(list,    a, n, i, j, k, t, m) {
            n = split(list, a, " ")
            m = 0
            for (i = 1; i <= n; i++) if (num(a[i])) v[++m] = a[i] + 0
            for (i = 2; i <= m; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
            if (m == 0) return ""
            k = int((m + 1) / 2)
            return m % 2 ? v[k] : (v[k] + v[k + 1]) / 2
        }
        BEGIN {
            sy = median(sy); uw = median(uw); nw = median(nw); fl = median(fl)
            ratio = (cmp != "-" && num(sy) && num(uw) && uw + 0 != 0) ? sprintf("%.2fx", sy / uw) : "-"
            verdict = "-"
            if (cmp == "<=" || cmp == ">=") {
                if (!num(sy) || !num(uw)) verdict = "n/a (no figure)"
                else if (cmp == "<=") verdict = (sy + 0 <= uw + 0) ? "PASS" : "MISS"
                else verdict = (sy + 0 >= uw + 0) ? "PASS" : "MISS"
            }
            also = num(fl) ? ", hyper floor " show(fl) : ""
            printf "%-46s %11s %11s %11s %8s  %-22s %s%s\n", metric, show(sy), show(uw), show(nw), ratio, target, verdict, (num(fl) ? "  (hyper floor " show(fl) ")" : "")
            if (verdict != "-")
                printf "issue12: %s  %s: switchyard %s, uWS %s (%s), target %s\n", verdict, metric, show(sy), show(uw), ratio, target >>summary
            if (table != "" && cmp != "-" && cmp != "info")
                printf "%s\t%s\tuWS\t%s\t%s\t%s\t%s\tNode ws %s%s\n", metric, show(sy), show(uw), ratio, target, verdict, show(nw), also >>table
        }'
}

issue12_table() {
    local table="$TMP/issue12.txt"
    {
        echo
        echo "## issue 12: switchyard vs uWebSockets.js vs Node ws (this run; DURATION=$DURATION;" \
            "$( [ "$ROUNDS" -gt 1 ] && echo "median of $ROUNDS interleaved rounds" || echo "one round"))"
        printf "%-46s %11s %11s %11s %8s  %-22s %s\n" \
            "metric" "switchyard" "uWS" "Node ws" "sy/uWS" "target" "verdict"
        row "server CPU per delivered msg, 10k x 10/s (us)" cpu_us_per_msg 12a 1 "%.2f" "<=" "<= uWS"
        row "p99 publish->receive, 10k x 10/s (ms)" p99_us 12a 1000 "%.1f" "<=" "<= uWS (keep the lead)"
        row "events missing, 10k x 10/s" missing 12a 1 "%d" - "0 (zero loss)"
        row "publishes that had to wait, 10k x 10/s" waited 12a 1 "%d" - "0: else p99 flatters"
        row "idle connection, server RSS (KiB per conn)" rss_per_conn_kib 12c 1 "%.2f" "<=" "<= uWS"
        row "WebSocket accepts/s (connect+upgrade+hello)" accepts_per_s 12d 1 "%.0f" ">=" ">= uWS"
        row "server CPU per accepted connection (us)" cpu_us_per_accept 12d 1 "%.1f" info "-"
        row "10k x 100/s delivered (msgs/s, saturated)" delivered_per_s 12b 1 "%.0f" ">=" ">= uWS (keep the lead)"
        row "not delivered by drain end, 10k x 100/s" missing 12b 1 "%d" - "-"
        row "events left unsent at the cutoff, 10k x 100/s" not_sent 12b 1 "%d" - "-"
        row "other processes' CPU, 10k x 10/s run (%)" others_pct 12a 1 "%d" - "< 10 for a quiet run"
    } >"$table"
    cat "$table"
}

for s in $SCENARIOS; do
    case $s in
        1) run 1 "10,000 clients x 10 ev/s x 256 B" \
               --clients 10000 --rate 10 --size 256 --duration "$DURATION" \
               --target-zero-loss --target-no-waits --target-cpu-us 8 ;;
        2) run 2 "10,000 clients x 100 ev/s x 256 B" \
               --clients 10000 --rate 100 --size 256 --duration "$DURATION" \
               --target-zero-loss --target-no-waits --target-cpu-us 4 ;;
        3) run 3 "1,000 clients x 100 ev/s x 256 B" \
               --clients 1000 --rate 100 --size 256 --duration "$DURATION" \
               --target-zero-loss --target-p99-ms 50 ;;
        4|4a|4b)
           if [ "$s" != 4b ]; then
               run 4a "15,000 idle connections, tiny hello" \
                   --idle --clients 15000 --duration 5 --target-rss-kib 4
           fi
           if [ "$s" != 4a ]; then
               run 4b "1,000 idle connections after a 60 KB hello (20 retained x 3 KB)" \
                   --idle --clients 1000 --duration 5 --retained 20 --retained-size 3072 \
                   --target-rss-kib 8
           fi ;;
        5) run 5 "100 clients x 200 ev/s x 4 KiB, 1 stalled half way" \
               --clients 100 --rate 200 --size 4096 --duration "$STALL_DURATION" \
               --stall 1 --stall-at 0.5 --target-stall ;;
        6) run 6 "hostile: 1,000 clients x 100 ev/s x 256 B, quiet vs a pattern flood" \
               --hostile --clients 1000 --rate 100 --size 256 --duration "$HOSTILE_PHASE" \
               --flood-frames 30 --flood-patterns 3600 \
               --target-flood-ratio 2 --target-zero-loss ;;
        issue12) issue12 ;;
        *) die "unknown scenario $s (1-6, 4a, 4b, issue12)" ;;
    esac
done

echo
echo "## summary"
cat "$SUMMARY"
exit "$status"
