#!/usr/bin/env bash
# Train a once-for-all supernet, then evaluate its largest and smallest subnets (BN recalibrated).
#
#   bash scripts/train_supernet.sh                       # default recipe on the embedded MNIST digits
#   CONFIG=configs/sandwich.yaml RUN=runs/sw bash scripts/train_supernet.sh
#   NPROC=2 bash scripts/train_supernet.sh               # data-parallel under torchrun (gloo, CPU)
#   bash scripts/train_supernet.sh --dataset cifar10 --data-path ~/data/cifar-10-batches-py
#
# Interrupt it at any time: running it again with the same RUN continues from the last finished epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/supernet-mnist5k}
CONFIG=${CONFIG:-configs/mnist5k.yaml}
NPROC=${NPROC:-1}
py=.venv/bin/python
if [ ! -x "$py" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e .
fi
if [ "$NPROC" -gt 1 ]; then
  # Each process gets its share of every batch; split the cores between them.
  threads=$(( $(nproc) / NPROC )); [ "$threads" -ge 1 ] || threads=1
  OMP_NUM_THREADS=$threads $py -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m nas.cli \
    supernet train --config "$CONFIG" --run-dir "$RUN" --resume --threads "$threads" "$@"
else
  $py -m nas.cli supernet train --config "$CONFIG" --run-dir "$RUN" --resume "$@"
fi
$py -m nas.cli supernet eval "$RUN"
