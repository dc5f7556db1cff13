#!/usr/bin/env bash
# Build ferroloop in a fresh virtual environment, run the founding notes'
# examples on it, then the scheduling benchmark against asyncio (and uvloop
# and rloop, installed from PyPI for the comparison), and a short
# subprocess/pipe benchmark.
#   PYTHON=python3.12 bash scripts/demo.sh     (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-demo}
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet . uvloop rloop || "$VENV/bin/python" -m pip install --quiet .
cd benches
"../$VENV/bin/python" -m ferroloop
# 5 repetitions (a few minutes) unless told otherwise, e.g. --reps 15 or --quick.
if [ $# -eq 0 ]; then set -- --reps 5; fi
"../$VENV/bin/python" bench_scheduling.py "$@"
# Spawning and pipe throughput, short form (bench_subprocess.py for the full one).
"../$VENV/bin/python" bench_subprocess.py --quick
