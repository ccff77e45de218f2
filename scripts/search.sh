#!/usr/bin/env bash
# Search a trained supernet's space for the best subnets under a latency budget on this machine, recorded in an
# Optuna study, then export the picks (re-measured on the runtime, ONNX + TFLite with parity checks).
#
#   bash scripts/search.sh                                   # evolution, latency_ms<=0.15 on ort:fp32
#   STRATEGY=nsga2 OBJECTIVES="accuracy latency_ms" bash scripts/search.sh
#   CONSTRAINT="latency_ms<=0.25" TABLE=litert:int8 BUDGET=300 bash scripts/search.sh
#   WORKERS=2 bash scripts/search.sh                         # 2 workers sharing one study (then the export)
#   STORAGE=postgresql://user@host/db STUDY=mine WORKER=3 bash scripts/search.sh   # join a study elsewhere
#
# Interrupt it at any time: running it again with the same RUN continues from the study (nothing measured twice).
# Watch it with `bash scripts/dashboard.sh` (RUN the same).
set -euo pipefail
cd "$(dirname "$0")/.."
SUPERNET=${SUPERNET:-runs/supernet-mnist5k}
RUN=${RUN:-runs/search}
STRATEGY=${STRATEGY:-evolution}
OBJECTIVES=${OBJECTIVES:-accuracy}
CONSTRAINT=${CONSTRAINT:-latency_ms<=0.15}
TABLE=${TABLE:-ort:fp32}
BUDGET=${BUDGET:-100}
BATCH=${BATCH:-20}
PICKS=${PICKS:-3}
SEED=${SEED:-0}
WORKERS=${WORKERS:-1}
STUDY=${STUDY:-search}
STORAGE=${STORAGE:-sqlite:///$RUN/study.db}
if [ ! -x .venv/bin/hwnas ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e ".[runtimes]"
fi
hwnas=.venv/bin/hwnas
[ -d "$SUPERNET/checkpoint" ] || { echo "no trained supernet in $SUPERNET: run scripts/train_supernet.sh first" >&2; exit 2; }
mkdir -p "$RUN"
args=(search --supernet "$SUPERNET" --strategy "$STRATEGY" --table "$TABLE" --budget "$BUDGET" --batch "$BATCH"
      --picks "$PICKS" --seed "$SEED" --run-dir "$RUN" --storage "$STORAGE" --study "$STUDY")
for o in $OBJECTIVES; do args+=(--objective "$o"); done
for c in $CONSTRAINT; do args+=(--constraint "$c"); done
if [ "$WORKERS" -gt 1 ]; then
  # Each worker runs its own strategy stream on the shared study, one core each; then the picks of the whole
  # study are exported once.
  pids=()
  for w in $(seq 0 $((WORKERS - 1))); do
    $hwnas "${args[@]}" --worker "$w" --threads 1 --no-export --no-progress > "$RUN/worker$w.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  tail -n 3 "$RUN"/worker*.log
  cons=(); for c in $CONSTRAINT; do cons+=(--constraint "$c"); done
  $hwnas export --supernet "$SUPERNET" --picks "$RUN/search/picks.csv" --top "$PICKS" --out "$RUN/subnets" \
    --table "$TABLE" "${cons[@]}"
else
  $hwnas "${args[@]}" --worker "${WORKER:-0}"
fi
