#!/usr/bin/env bash
# Speed and memory of the upsamplers with `naf bench`, as recorded in docs/benchmarks.md.
#   bash benchmarks/bench_upsampler.sh [OUT_FOLDER]
# Run it on an otherwise idle machine; each CPU row runs in its own process.
set -euo pipefail
out=${1:-bench-results}
mkdir -p "$out"
naf bench --ratio 2 8 16 32 72 --json > "$out/ratios.json"                                 # the paper's setting, floor rows
naf bench --ratio 16 --upsampler naf --backend all --no-floor --json > "$out/backends.json"  # every attention backend at x16
naf bench --ratio 128 --upsampler naf --banded --no-floor --repeats 1 --json > "$out/x128-banded.json"
naf bench --ratio 16 --upsampler naf --precision bf16 --json > "$out/bf16.json"
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  naf bench --device cuda --ratio 16 72 128 --backend cells reference --precision bf16 --json > "$out/cuda.json"
fi
echo "results in $out"
