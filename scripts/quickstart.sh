#!/usr/bin/env bash
# The main job: set up a venv (once), then `hwnas run configs/quickstart.yaml` on the embedded MNIST digits and
# this machine's CPU: supernet training, latency tables, search, export, compression, the comparison with
# hand-designed networks, and runs/quickstart/report.html. Run it again after an interruption and it continues;
# finished stages are skipped. See what it would do first: .venv/bin/hwnas run configs/quickstart.yaml --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/hwnas ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -e ".[runtimes]"
fi
.venv/bin/hwnas run configs/quickstart.yaml "$@"
