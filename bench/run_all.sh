#!/usr/bin/env bash
# Run every benchmark once (about 16 minutes on 2 cores) and summarise the figures in bench/results/README.md.
# Test data is generated once into bench/.data/ (gitignored; ~1 GB with the Parquet files), and the MySQL
# tables once into the databases osiris_bench and osiris_bench_opt of the MariaDB at
# OSIRIS_TEST_MYSQL_HOST/PORT (127.0.0.1:3306).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/.data
PY=${PYTHON:-.venv/bin/python}
started=$(date +%s)
# bench_mysql compares against connectorx, an optional bench dependency (not in pyproject): install it
# into the venv when it is missing; bench_mysql reports its rows as unavailable if this fails.
if ! "$PY" -c 'import connectorx' 2>/dev/null; then
    echo "installing connectorx into $("$PY" -c 'import sys; print(sys.prefix)') (bench_mysql baseline)"
    "$PY" -m pip install --quiet connectorx || echo "   connectorx could not be installed; bench_mysql goes on without it"
fi
read -r load_start _ < /proc/loadavg
for bench in bench_scheduling bench_throughput bench_memory bench_shrink bench_mysql bench_optimizer bench_flight_security bench_hash_partition; do
    echo "== $bench"
    t0=$(date +%s)
    "$PY" "bench/$bench.py" > "bench/.data/$bench.log" 2>&1 || { tail -30 "bench/.data/$bench.log"; exit 1; }
    grep -E '^\s+\S' "bench/.data/$bench.log" | grep -v '^|' || true
    echo "   ($(( $(date +%s) - t0 )) s)"
done
"$PY" bench/summarize.py --suite-seconds "$(( $(date +%s) - started ))" --load-start "$load_start"
echo "wrote bench/results/README.md"
