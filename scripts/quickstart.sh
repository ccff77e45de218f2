#!/usr/bin/env bash
# The main job (grows with each stage of hwnas): set up a venv, then show the search spaces, the reference
# networks in the architecture language, their analytic costs, and a few sampled subnets with their costs;
# then train the once-for-all supernet on the embedded MNIST digits with the default recipe (about 20
# minutes on a 2-core CPU; run the script again after an interruption and it continues) and evaluate it.
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
echo; echo "== supernet: default recipe (configs/mnist5k.yaml) on mnist5k -> runs/quickstart-supernet"
$hwnas supernet train --config configs/mnist5k.yaml --run-dir runs/quickstart-supernet --resume
$hwnas supernet eval runs/quickstart-supernet --random 3
