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
# Needs: cargo; a hard fd limit of at least ~15,100 for scenario 4 (the load
# generator raises its soft limit itself; the server inherits it).
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

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "broadcast.sh: error: $*" >&2; exit 1; }
say() { echo "broadcast.sh: $*" >&2; }

command -v cargo >/dev/null 2>&1 || die "cargo not found"

# ---------------------------------------------------------------- build
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
build_loadgen

# Private copies, so a rebuild in this tree during the runs changes nothing.
TMP=$(mktemp -d /tmp/switchyard-broadcast.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cp "$ROOT/target/release/switchyard" "$TMP/switchyard"
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

# run NUMBER "description" loadgen-args...
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
        *) die "unknown scenario $s (1-6, 4a, 4b)" ;;
    esac
done

echo
echo "## summary"
cat "$SUMMARY"
exit "$status"
