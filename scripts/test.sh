#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: lint, types, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy osiris_flight
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
