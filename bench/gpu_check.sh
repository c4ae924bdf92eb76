#!/usr/bin/env bash
# GPU check: transformer-base training and decoding speed on one GPU, and the DDP start-up.
# Runs from the source tree with PYTHONPATH; installs nothing, needs no network; under 8 minutes
# on an NVIDIA H200. `--cpu-smoke` runs the same code on CPU with a tiny model in under a minute.
# usage: bash bench/gpu_check.sh [--cpu-smoke] [--train-seconds S] [--no-compile]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
