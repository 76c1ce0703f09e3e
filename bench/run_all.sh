#!/usr/bin/env bash
# Run every benchmark once (about 5 minutes on 2 cores) and summarise the figures in bench/results/README.md.
# Test data is generated once into bench/.data/ (gitignored; ~1 GB with the Parquet files).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/.data
PY=${PYTHON:-.venv/bin/python}
started=$(date +%s)
read -r load_start _ < /proc/loadavg
for bench in bench_scheduling bench_throughput bench_memory; do
    echo "== $bench"
    t0=$(date +%s)
    "$PY" "bench/$bench.py" > "bench/.data/$bench.log" 2>&1 || { tail -30 "bench/.data/$bench.log"; exit 1; }
    grep -E '^\s+\S' "bench/.data/$bench.log" | grep -v '^|' || true
    echo "   ($(( $(date +%s) - t0 )) s)"
done
"$PY" bench/summarize.py --suite-seconds "$(( $(date +%s) - started ))" --load-start "$load_start"
echo "wrote bench/results/README.md"
