#!/usr/bin/env bash
# The GPU story in one command (see launch/gpu_check.py): tests/gpu (every stage on one GPU to its
# export) and the GPU benchmarks, written to one markdown report (default runs/gpu_check/gpu_check.md).
# Without a CUDA GPU: one line, exit 0.
#
#   bash launch/gpu_check.sh [--out DIR] [--wheels DIR] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PYTHON" launch/gpu_check.py "$@"
