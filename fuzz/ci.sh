#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS (default 30) each, as
# .ci/run's fuzzing step. Installs cargo-fuzz when missing; uses the stable
# toolchain with RUSTC_BOOTSTRAP=1 (see fuzz/README.md). FUZZ_SANITIZER
# (default none) is cargo-fuzz's --sanitizer: the fuzzed code is safe Rust,
# where bounds checks and debug assertions catch what ASan would, and
# `address` doubles the build (about 4 min instead of 2 on two cores). Prints each
# target's final libFuzzer lines; fails on the first target that crashes
# (its log tail and the crash input's path are printed).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
sanitizer="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

started=$SECONDS
cargo fuzz build --sanitizer "$sanitizer"
echo "fuzz build: $((SECONDS - started)) s"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
  target_started=$SECONDS
  if cargo fuzz run --sanitizer "$sanitizer" "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    final="$(grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs)' "$log" | tr '\n' ' ')"
    echo "fuzz ${target}: ${final:-$(tail -n 1 "$log")} ($((SECONDS - target_started)) s)"
  else
    echo "fuzz ${target}: FAILED; last lines of its log:" >&2
    tail -n 60 "$log" >&2
    exit 1
  fi
done
echo "fuzzing: $((SECONDS - started)) s in all"
