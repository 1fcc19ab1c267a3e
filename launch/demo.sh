#!/usr/bin/env bash
# The whole lineage on built-in synthetic data, on CPU, in one command:
#   built-in raw datasets -> face shards -> MAE pretraining -> AffectNet-style fine-tuning ->
#   Hume-Reaction-style feature extraction -> ERI training -> Hub-ready published folders,
# ending with a summary (runs/demo/SUMMARY.md). Installs what is missing into .venv first.
#
#   bash launch/demo.sh                 # everything, into runs/demo
#   bash launch/demo.sh --out DIR       # elsewhere; --quick for a smaller, faster pass
#   bash launch/demo.sh --cpu-torch     # install PyTorch's CPU build (no CUDA libraries) into a new .venv
#   bash launch/demo.sh --task emi      # stage 3 on the EMI task (6 intensities, Hume-Vidmimic2 layout)
set -euo pipefail
cd "$(dirname "$0")/.."

CPU_INDEX=https://download.pytorch.org/whl/cpu
cpu_torch=0
args=()
for arg in "$@"; do
    if [ "$arg" = --cpu-torch ]; then cpu_torch=1; else args+=("$arg"); fi
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "demo: creating .venv"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, timm, webdataset, accelerate, transformers, omegaconf, av, facenet_pytorch, skimage, pytest" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    if [ "$cpu_torch" = 1 ]; then
        echo "demo: installing PyTorch's CPU build of torch and torchvision (a pair) from $CPU_INDEX"
        .venv/bin/python -m pip install --quiet torch torchvision --index-url "$CPU_INDEX"
    elif ! command -v nvidia-smi > /dev/null; then
        echo "demo: no NVIDIA GPU found, and torch from PyPI brings about 3 GB of CUDA libraries;" \
             "Ctrl-C, remove .venv and run again with --cpu-torch for PyTorch's CPU build instead"
    fi
    echo "demo: installing the suite and its dependencies into .venv (a few minutes)"
    # torch and torchvision come from one index together: a mismatched pair fails to import
    .venv/bin/python -m pip install --quiet -e ".[dev]"
elif [ "$cpu_torch" = 1 ]; then
    echo "demo: .venv is installed already (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'));" \
         "--cpu-torch changes nothing: remove .venv to reinstall with PyTorch's CPU build"
fi
# the commands as this checkout declares them: a .venv installed from an older checkout keeps the
# old entry points (affect-publish moved to affect_publish/) until the suite is installed again
if ! .venv/bin/affect-publish --help > /dev/null 2>&1; then
    echo "demo: updating the suite's commands in .venv"
    .venv/bin/python -m pip install --quiet --no-deps -e .
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
exec .venv/bin/python launch/demo.py ${args[@]+"${args[@]}"}
