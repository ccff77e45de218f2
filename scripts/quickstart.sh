#!/usr/bin/env bash
# The main job (grows with each stage of hwnas): set up a venv, then show the search spaces, the reference
# networks in the architecture language, their analytic costs, and a few sampled subnets with their costs;
# then the latency tables shipped for this machine and their predictions; then train the once-for-all
# supernet on the embedded MNIST digits with the default recipe (about 19 minutes on a 2-core CPU; run the
# script again after an interruption and it continues, or reuses the trained one) and evaluate it; then search
# it for the most accurate subnet under a latency budget on this machine's shipped ONNX Runtime table (100
# measured subnets, every one a trial of runs/quickstart-search/study.db: `bash scripts/dashboard.sh` with
# RUN=runs/quickstart-search shows it), re-measure the picks on ONNX Runtime and export them (ONNX + TFLite,
# parity-checked) to runs/quickstart-search/subnets/; then compress the best pick (joint pruning, per-block
# precision and distillation under a latency and a size budget) to runs/quickstart-search/compressed/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/hwnas ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e ".[runtimes]"
fi
hwnas=.venv/bin/hwnas
$hwnas space list
$hwnas space show small
$hwnas space show imagenet
for net in $($hwnas arch reference); do
  echo; echo "== $net"; $hwnas arch cost "$net"
done
echo; echo "== 3 random subnets of the small space (seed 0)"
$hwnas space sample small --n 3 --seed 0 | while read -r arch; do $hwnas arch cost "$arch" --space small; echo; done
echo; echo "== latency lookup tables shipped for this machine (latency_tables/data/), and predictions with them"
for table in latency_tables/data/*/; do
  [ -f "$table/meta.json" ] && $hwnas lut show "$table"
done
ort_table=$(ls -d latency_tables/data/small-*-ort-fp32-t1 | head -n 1)
$hwnas space sample small --n 3 --seed 0 | while read -r arch; do
  $hwnas arch cost "$arch" --space small --table "$ort_table" | grep -E "^(arch|macs|latency_ms)"
done
echo; echo "== supernet: default recipe (configs/mnist5k.yaml) on mnist5k -> runs/quickstart-supernet"
$hwnas supernet train --config configs/mnist5k.yaml --run-dir runs/quickstart-supernet --resume
$hwnas supernet eval runs/quickstart-supernet --random 3
echo; echo "== search: evolution, accuracy under latency_ms<=0.15 (ort fp32 table) -> runs/quickstart-search"
$hwnas search --supernet runs/quickstart-supernet --strategy evolution --option population=40 --budget 100 \
  --batch 20 --constraint "latency_ms<=0.15" --table ort:fp32 --picks 3 --run-dir runs/quickstart-search
echo; echo "== compression: the best pick pruned, quantised per block and distilled jointly (ORT table), to 0.67 x its"
echo "   predicted latency and a fifth of its fp32 weights -> runs/quickstart-search/compressed"
read -r best budget size < <(.venv/bin/python -c "
import csv; p = next(csv.DictReader(open('runs/quickstart-search/search/picks.csv')))
print(p['key'], round(0.67 * float(p['latency_ms']), 4), int(0.2 * 4 * int(p['params'])))")
if ! ls runs/quickstart-search/compressed/*/compress.json > /dev/null 2>&1; then
  $hwnas compress "runs/quickstart-search/subnets/$best" --method joint --table ort:fp32 --epochs 2 \
    --constraint "latency_ms<=$budget" --constraint "size_bytes<=$size" --supernet runs/quickstart-supernet \
    --out runs/quickstart-search/compressed --no-progress
fi
echo; echo "== summary"
echo "supernet:  runs/quickstart-supernet (train_log.jsonl, checkpoint/)"
echo "study:     runs/quickstart-search/study.db (RUN=runs/quickstart-search bash scripts/dashboard.sh)"
echo "picks:     runs/quickstart-search/search/picks.csv"
echo "subnets:   $(ls -d runs/quickstart-search/subnets/*/ | tr '\n' ' ')"
echo "compressed: $(ls -d runs/quickstart-search/compressed/*/ | tr '\n' ' ') (compress.json: accuracy, loyalty, sizes, latency)"
