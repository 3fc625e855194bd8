#!/usr/bin/env bash
# Set up (idempotent) and reproduce the paper's Figure 1 on the CPU: the toy trains and writes
# paper_figs/out/figure1.json, then paper_figs draws paper_figs/out/figure1.{png,pdf} from it (one step).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m paper_figs.fig1_toy "$@"
