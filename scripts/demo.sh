#!/usr/bin/env bash
# Set up (idempotent), generate a sample events file, and run the milestone's parallel example
# (two aggregations of one extract, joined and written out) on the embedded local cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ROWS=${DEMO_ROWS:-2000000}
.venv/bin/python scripts/demo/make_events.py --rows "$ROWS" --out scripts/demo/data/events.csv
cd scripts/demo
../../.venv/bin/osiris-flight run parallel_processing.yaml "$@"
echo
echo "output: scripts/demo/out/daily_summary.csv"
head -5 out/daily_summary.csv
