#!/usr/bin/env bash
# The Python package's checks, as .ci/run and the README run them: a venv in
# clients/python/.venv with the switchyard-gateway distribution (the root
# pyproject.toml, installed editable) and its test tools, then ruff (lint
# and format), mypy --strict and pytest against the real gateway binary
# (SWITCHYARD_BIN, default target/debug/switchyard, which `cargo test` builds).
# Fails when pytest collected no test.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
cd "$HERE"

if [[ ! -x "$VENV/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# --group (PEP 735 dependency groups) needs pip 25.1.
"${pip[@]}" "pip>=25.1"
# The one distribution, editable: maturin builds the binary (dev profile,
# what `cargo build` already built) into the venv and links src/switchyard.
"${pip[@]}" -e "$ROOT" --group "$ROOT/pyproject.toml:test"

export SWITCHYARD_BIN="${SWITCHYARD_BIN:-$ROOT/target/debug/switchyard}"
if [[ ! -x "$SWITCHYARD_BIN" ]]; then
    (cd "$ROOT" && cargo build --quiet)
fi

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy --strict"
"$VENV/bin/mypy" src tests
echo "== examples/railway: ruff, mypy --strict (the package's settings)"
"$VENV/bin/ruff" check --config "$HERE/pyproject.toml" "$ROOT/examples/railway"
"$VENV/bin/ruff" format --check --config "$HERE/pyproject.toml" "$ROOT/examples/railway"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pandas-stubs
(cd "$ROOT/examples/railway" && "$VENV/bin/mypy" --strict --python-version 3.10 engine.py dashboard.py)
echo "== pytest"
status=0
"$VENV/bin/pytest" -q "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "pytest collected no test" >&2
    exit 1
fi
exit $status
