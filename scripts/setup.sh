#!/usr/bin/env bash
# Create .venv (if missing) and install osiris-flight with its dev extras into it.
# Idempotent: a second run only reinstalls the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "osiris-flight installed in $(pwd)/.venv"
