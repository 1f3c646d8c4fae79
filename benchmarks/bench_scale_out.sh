#!/usr/bin/env bash
# Images/s of the main job with 1 process and with 2 (torchrun; --shard runs), as recorded in
# docs/benchmarks.md ("Scale-out"). Each variant writes its own file; the split outputs are
# checked equal to the one-process file with the same threads per process (docs/format.md).
#   bash benchmarks/bench_scale_out.sh PHOTO_FOLDER [OUT_FOLDER]
set -euo pipefail
photos=${1:?usage: bench_scale_out.sh PHOTO_FOLDER [OUT_FOLDER]}
out=${2:-scale-out-results}
mkdir -p "$out"
job=(upsample "$photos" --vfm effnet-lite0 --scale 16 --device cpu)
clock() { local start=$SECONDS; "$@" > /dev/null 2>> "$out/log.txt"; echo $((SECONDS - start)); }
n=$(find "$photos" -maxdepth 1 -iname '*.jpg' | wc -l)
report() { python -c "import sys; print(f'{sys.argv[1]:<44} {int(sys.argv[2]):>4} s  {int(sys.argv[3]) / int(sys.argv[2]):.3f} images/s')" "$@"; }
report "1 process, all cores" "$(clock naf "${job[@]}" --overwrite -o "$out/one.h5")" "$n"
report "1 process, 1 thread" "$(OMP_NUM_THREADS=1 clock naf "${job[@]}" --overwrite -o "$out/one-1t.h5")" "$n"
report "torchrun, 2 processes x 1 thread" "$(clock torchrun --standalone --nproc-per-node 2 -m naf_cli "${job[@]}" --overwrite -o "$out/torchrun.h5")" "$n"
rm -rf "$out"/shard.h5*
start=$SECONDS
for i in 0 1; do OMP_NUM_THREADS=1 naf "${job[@]}" --shard $i/2 -o "$out/shard.h5" > /dev/null 2>> "$out/log.txt" & done
wait
report "--shard 0/2 and 1/2 at once, 1 thread each" $((SECONDS - start)) "$n"
python - "$out" <<'PY'
import sys
from pathlib import Path

import h5py
import numpy as np

out = Path(sys.argv[1])

def data(path):
    with h5py.File(path, "r") as f:
        return {k: np.asarray(f["features"][k]).tobytes() for k in f["features"]}

one = data(out / "one-1t.h5")
for name in ("torchrun.h5", "shard.h5"):
    print(f"{name}: {'equal to' if data(out / name) == one else 'DIFFERENT from'} the 1-thread single-process file")
PY
