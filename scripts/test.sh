#!/usr/bin/env bash
# Build ferroloop from scratch in a fresh virtual environment and run its tests.
#   PYTHON=python3.12 bash scripts/test.sh     (default: python3)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-test-$("$PYTHON" -c 'import sys; print("%d%d" % sys.version_info[:2])')}
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet '.[test]'
# Run from outside the source tree so the installed package is what is tested.
cd tests
exec "../$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" .
