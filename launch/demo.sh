#!/usr/bin/env bash
# The whole lineage on built-in synthetic data, on CPU, in one command:
#   built-in raw datasets -> face shards -> MAE pretraining -> AffectNet-style fine-tuning ->
#   Hume-Reaction-style feature extraction -> ERI training -> Hub-ready published folders,
# ending with a summary (runs/demo/SUMMARY.md). Installs what is missing into .venv first.
#
#   bash launch/demo.sh                 # everything, into runs/demo
#   bash launch/demo.sh --out DIR       # elsewhere; --quick for a smaller, faster pass
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "demo: creating .venv"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, timm, webdataset, accelerate, transformers, av, facenet_pytorch, skimage, pytest" 2>/dev/null; then
    echo "demo: installing the suite and its dependencies into .venv (a few minutes, about 5 GB)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch and torchvision come from the package index together: a mismatched pair fails to import
    .venv/bin/python -m pip install --quiet -e ".[dev]"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
exec .venv/bin/python launch/demo.py "$@"
