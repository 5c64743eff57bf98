#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA tests, training and inference speed, a DDP step on
# two GPUs, the demo; one Markdown table in gpu_check.md. Run from anywhere on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
