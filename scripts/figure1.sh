#!/usr/bin/env bash
# Set up (idempotent) and reproduce the paper's Figure 1 on the CPU: paper_figs/out/figure1.{png,pdf}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m toy figure1 "$@"
