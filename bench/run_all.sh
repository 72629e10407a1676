#!/usr/bin/env bash
# Run every benchmark in bench/ once, one after another (never in parallel: they
# would measure each other). Tables go to stdout, progress to stderr, JSON to
# bench/results/<name>.json. Extra arguments are not passed on: run a script by
# itself to change its options (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then
    echo "run_all.sh: needs root (network namespaces): sudo bench/run_all.sh" >&2
    exit 1
fi
PY=.venv/bin/python
for bench in addel burst throughput overlay_throughput footprint soak convergence scale; do
    echo "== bench/$bench.py ($(date +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$PY" "bench/$bench.py"
    echo
done
echo "run_all.sh: done; JSON in bench/results/"
