#!/usr/bin/env bash
# Device check of DISeL's fused update (bf16 gradients vs the reference; DISeL vs LoRA at 7B layer shapes).
# On a CUDA machine: the full shapes, well under 10 minutes. Without CUDA: small shapes, seconds.
# Extra arguments go to benchmarks/device_check.py (e.g. --small, --ranks 16, --reps 10).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 600 python benchmarks/device_check.py "$@"
