#!/usr/bin/env bash
# Builds the portable switchyard-gateway wheel (the gateway binary plus the
# Python package, manylinux2014 x86_64, stripped) and prints its path: the
# only line on stdout, so other steps can run `wheel=$(clients/python/wheel.sh)`.
#
# One release build per commit: the wheel lands in target/wheels/portable/
# with the commit it was built from; while the sources are unchanged a second
# call prints the same path without building. maturin, zig (the ziglang
# package) and auditwheel come from PyPI, pinned, into target/wheel-tools;
# zig links against glibc 2.17, so no manylinux container is needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/target/wheels/portable"
TOOLS="$ROOT/target/wheel-tools"
MATURIN=1.16.0
ZIGLANG=0.15.2
AUDITWHEEL=6.8.2 # for clients/python/wheel-ci.sh

pins="maturin==$MATURIN ziglang==$ZIGLANG auditwheel==$AUDITWHEEL"
if [[ "$(cat "$TOOLS/pins" 2>/dev/null)" != "$pins" ]]; then
    "${PYTHON:-python3}" -m venv --clear "$TOOLS"
    # shellcheck disable=SC2086 # one word per pin
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check $pins >&2
    echo "$pins" >"$TOOLS/pins"
fi

# Everything that goes into the wheel.
sources=(Cargo.toml Cargo.lock pyproject.toml README.md src static clients/python/src)
commit="$(git -C "$ROOT" rev-parse HEAD)"
changed="$(git -C "$ROOT" status --porcelain -- "${sources[@]}")"
wheels=("$OUT"/*.whl)
if [[ -z "$changed" && -f "$OUT/commit" && "$(<"$OUT/commit")" == "$commit" && -f "${wheels[0]}" ]]; then
    echo "wheel for $commit already built" >&2
    echo "${wheels[0]}"
    exit 0
fi

rm -rf "$OUT"
start=$SECONDS
# maturin looks for zig through `python3 -m ziglang`: the tools venv first.
(cd "$ROOT" && PATH="$TOOLS/bin:$PATH" maturin build --release --zig \
    --compatibility manylinux2014 --target x86_64-unknown-linux-gnu --out "$OUT") >&2
echo "wheel built in $((SECONDS - start)) s" >&2
[[ -n "$changed" ]] || echo "$commit" >"$OUT/commit"
wheels=("$OUT"/*.whl)
echo "${wheels[0]}"
