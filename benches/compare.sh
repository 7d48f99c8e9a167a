#!/usr/bin/env bash
# benches/compare.sh — switchyard side by side with its peers, in one table.
#
# Runs, one after the other on this machine:
#   benches/proxy.sh                        switchyard vs nginx as a reverse proxy
#   SCENARIOS=issue12 benches/broadcast.sh  switchyard vs uWebSockets.js and Node ws
# and prints one table: every row a figure of this run for switchyard and for
# its peer measured in the same run, the ratio, the target and PASS/MISS,
# headed by the machine, the date and the commit. Each script's own, longer
# table (with how each figure was measured) is printed above it; the
# scripts' headers say what each figure means.
#
# Usage: benches/compare.sh                      (about 15 minutes, one round each)
#        ROUNDS=3 benches/compare.sh             (medians of 3 interleaved rounds)
#        PROXY_ROUNDS=3 FANOUT_ROUNDS=1 benches/compare.sh   (each script its own)
#        PROXY_DURATION=5s FANOUT_DURATION=10 MARKDOWN=1 benches/compare.sh
#          MARKDOWN=1 also prints the table as Markdown (for docs/benchmarks.md)
# Needs what the two scripts need: cargo, node + npm, and apt for wrk and nginx.
set -euo pipefail

ROUNDS=${ROUNDS:-1}
PROXY_ROUNDS=${PROXY_ROUNDS:-$ROUNDS}
FANOUT_ROUNDS=${FANOUT_ROUNDS:-$ROUNDS}
PROXY_DURATION=${PROXY_DURATION:-5s}
FANOUT_DURATION=${FANOUT_DURATION:-10}
MARKDOWN=${MARKDOWN:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TMP=$(mktemp -d /tmp/switchyard-compare.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export TABLE_TSV="$TMP/table.tsv"
: >"$TABLE_TSV"

status=0
ROUNDS=$PROXY_ROUNDS DURATION=$PROXY_DURATION benches/proxy.sh || status=1
ROUNDS=$FANOUT_ROUNDS DURATION=$FANOUT_DURATION SCENARIOS=issue12 benches/broadcast.sh || status=1

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
echo
echo "## switchyard against its peers, this run"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), switchyard $(git describe --always --dirty 2>/dev/null || echo '?')," \
    "$(nproc) cores ($cpu), $(uname -r); rounds: proxy $PROXY_ROUNDS, fan-out $FANOUT_ROUNDS (medians when > 1)"
python3 - "$TABLE_TSV" "$MARKDOWN" <<'EOF'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
head = ["measure", "switchyard", "peer", "peer, same run", "ratio", "target", "verdict", "also"]
widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
for r in [head] + rows:
    print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
misses = sum(r[6] != "PASS" for r in rows)
print("%d of %d rows PASS" % (len(rows) - misses, len(rows)))
if sys.argv[2] == "1":
    print()
    print("| measure | switchyard | peer, same run | ratio | target | verdict |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        also = " (%s)" % r[7] if r[7] else ""
        print("| %s | %s | %s %s%s | %s | %s | %s |" % (r[0], r[1], r[2], r[3], also, r[4], r[5], r[6]))
EOF
exit "$status"
