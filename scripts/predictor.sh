#!/usr/bin/env bash
# Collect supernet accuracies of random subnets (BN recalibrated; resumable) and train the accuracy predictor on
# them, reporting RMSE and Kendall tau on held-out subnets; then a search can use it:
#   hwnas search --supernet runs/supernet-mnist5k --predictor runs/supernet-mnist5k/predictor --budget 20000 ...
#   N=1200 bash scripts/predictor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SUPERNET=${SUPERNET:-runs/supernet-mnist5k}
N=${N:-1200}
OUT=${OUT:-$SUPERNET/predictor}
[ -x .venv/bin/hwnas ] || { python3 -m venv .venv; .venv/bin/pip install -q -e .; }
.venv/bin/hwnas predictor collect "$SUPERNET" --n "$N" --out "$OUT"
.venv/bin/hwnas predictor train "$SUPERNET" --out "$OUT"
