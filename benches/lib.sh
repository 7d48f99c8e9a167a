# benches/lib.sh — sourced by the scripts that drive benches/loadgen/
# (broadcast.sh, redis.sh); not run on its own. Expects `die` and `say`.

# Builds switchyard (release) and the load generator (bench profile) and
# sets LOADGEN to the load generator's executable.
build_loadgen() {
    say "building switchyard (release) and the load generator (bench profile)"
    cargo build --release --quiet
    cargo bench --bench loadgen --no-run --quiet
    LOADGEN=$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null \
        | grep '"name":"loadgen"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
    [ -n "$LOADGEN" ] && [ -x "$LOADGEN" ] || die "could not find the loadgen bench executable"
}
