# benches/lib.sh — sourced by the benchmark scripts (broadcast.sh, redis.sh,
# proxy.sh, proxy-instructions.sh); not run on its own. Expects `die` and `say`.

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

# The nginx binary's path, or nothing.
find_nginx() {
    command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

# install_missing PACKAGE...: installs them with apt-get (as root; nginx as
# nginx-light where the Debian release still has it).
install_missing() {
    [ "$(id -u)" -eq 0 ] || die "missing $* and not root: install them first"
    say "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local pkgs=() p
    for p in "$@"; do
        if [ "$p" = nginx ] && apt-cache show nginx-light >/dev/null 2>&1; then
            pkgs+=(nginx-light)
        else
            pkgs+=("$p")
        fi
    done
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}
