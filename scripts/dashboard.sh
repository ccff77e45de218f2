#!/usr/bin/env bash
# Serve optuna-dashboard for a search's study on http://127.0.0.1:${PORT:-8080}/ (it prints the URL): history and
# Pareto front by objective name, infeasible trials greyed, every trial's architecture, key, costs, latency table
# and feasibility; the study's command line, table ids and measured latencies. Ctrl-C stops it.
#   bash scripts/dashboard.sh                  # runs/search/study.db
#   RUN=runs/bench-hypervolume PORT=8081 bash scripts/dashboard.sh
#   STORAGE=postgresql://user@host/db bash scripts/dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/search}
[ -x .venv/bin/hwnas ] || { python3 -m venv .venv; .venv/bin/pip install -q -e .; }
if [ -n "${STORAGE:-}" ]; then
  exec .venv/bin/hwnas dashboard "$RUN" --storage "$STORAGE" --port "${PORT:-8080}"
fi
exec .venv/bin/hwnas dashboard "$RUN" --port "${PORT:-8080}"
