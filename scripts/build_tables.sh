#!/usr/bin/env bash
# Build (or resume) the latency tables hwnas ships for this machine, 1 thread, each with its network-level
# correction (30 subnets) and a validation on 100 other subnets, into latency_tables/data/.
# Measure on an otherwise idle machine: 1-thread timings move with anything else running.
#   TABLES="small:ort:fp32 small:litert:int8" bash scripts/build_tables.sh   # a subset
# A spec is space:runtime:precision[:warmup:runs] (default 10 warm-up and 50 timed runs per model).
# Re-running it refreshes a table in place: only what a changed block or conversion affects is measured again,
# unless the machine has drifted since (then all of it; DRIFT_TOLERANCE=0 forces a full re-measurement).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/hwnas ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e ".[runtimes]"
fi
hwnas=.venv/bin/hwnas
device=${DEVICE:-$(.venv/bin/python -c "from latency_tables.table import default_device; print(default_device())")}
TABLES=${TABLES:-"small:ort:fp32 small:ort:int8 small:litert:fp32 small:litert:fp16 small:litert:int8 imagenet:ort:fp32:5:20"}
for spec in $TABLES; do
  IFS=: read -r space runtime precision warmup runs <<< "$spec"
  out="latency_tables/data/${space}-${device}-${runtime}-${precision}-t1"
  echo "== $out"
  $hwnas lut build --space "$space" --runtime "$runtime" --precision "$precision" --threads 1 \
    --warmup "${warmup:-10}" --runs "${runs:-50}" --device "$device" --pin-cpu "${PIN_CPU:-1}" --fit-networks 30 --validate 100 --jobs "${JOBS:-2}" \
    --drift-tolerance "${DRIFT_TOLERANCE:-0.10}" --out "$out"
done
