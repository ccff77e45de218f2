#!/usr/bin/env bash
# The main job (grows with each stage of hwnas): set up a venv, then show the search spaces, the reference
# networks in the architecture language, their analytic costs, and a few sampled subnets with their costs;
# then the latency tables shipped for this machine and their predictions; then train the once-for-all
# supernet on the embedded MNIST digits with the default recipe (about 17 minutes on a 2-core CPU; run the
# script again after an interruption and it continues) and evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/hwnas ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e .
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
