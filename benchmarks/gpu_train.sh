#!/usr/bin/env bash
# Training variants on a lent GPU (device tool), each stopped after TRAIN_MINUTES (3.5) with its resumable state, then `naf eval` of
# what they reached (reconstruction with seams and variance, and the probe), and meanwhile the
# correctness steps of gpu_check.sh; everything comes back as a few tars under $OUT.
#
#   here, once:   bash benchmarks/gpu_wheels.sh; cp -r ../shared/photos/train .gpu-photos
#   on the GPU:   bash benchmarks/gpu_train.sh            (carry [".gpu-wheels", ".gpu-photos"], under 9 minutes)
#   on any CPU:   bash benchmarks/gpu_train.sh --cpu-dry-run   (a few steps at tiny sizes)
#
# Runs: A resumes training-runs/effnet-x2-x16-warm (its own command, on CUDA); B and C are new
# runs (runs/gpu-B, runs/gpu-C; the dry run's under .gpu-train-work/dry-*) warm-started from the x2-only weights, which score best on the
# probe at x16. Each run stops after TRAIN_MINUTES and saves a resumable state.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/gpu-train-out}
PHOTOS=${PHOTOS:-.gpu-photos}
WORK=.gpu-train-work
mkdir -p "$OUT" "$WORK" runs
START=$(date +%s)
left() { echo $(( ${DEADLINE:-540} - ($(date +%s) - START) )); }
export PYTHONUNBUFFERED=1

RUN_A=training-runs/effnet-x2-x16-warm RUN_B=runs/gpu-B RUN_C=runs/gpu-C
if [ "${1:-}" = "--cpu-dry-run" ]; then
    # a copy of run A (the committed one is left alone) and four small photos, three of them validation ones
    DEV=cpu; MINUTES=0.4; STEPS=4000; CROP=256; EVERY=3; DEADLINE=1200; VFACTORS=(2 4)
    EVAL_FACTORS=(2); PROBE=(--factor 4 --composites 4 --crop 64); CHECK=(--cpu-dry-run); THREADS=1
    COMPILE=(--channels 8 --lr-size 4 --image-size 32 --repeats 1 --precision fp32)
    rm -rf "$WORK"/dry-* && cp -r "$RUN_A" "$WORK/dry-A" && RUN_A=$WORK/dry-A RUN_B=$WORK/dry-B RUN_C=$WORK/dry-C
    mkdir -p "$WORK/dry-photos" && for p in astronaut chelsea coffee china; do cp "$PHOTOS/$p.jpg" "$WORK/dry-photos/"; done
    PHOTOS=$WORK/dry-photos
else
    DEV=cuda; MINUTES=${TRAIN_MINUTES:-3.5}; STEPS=4000; CROP=768; EVERY=250; VFACTORS=(2 4 8)
    EVAL_FACTORS=(2 4 8); PROBE=(--factor 4 8 16); CHECK=(); THREADS=4; COMPILE=()
fi

# setup (the carried wheels, this tree) through gpu_check.sh, whose environment step is cheap
bash benchmarks/gpu_check.sh "${CHECK[@]}" --only environment --work "$WORK/check" >"$WORK/setup.log" 2>&1 \
    || { tail -20 "$WORK/setup.log"; exit 1; }
[ -d /tmp/naf-gpu-check-site ] && export PYTHONPATH=/tmp/naf-gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
NAF=("${PYTHON:-python3}" -m naf_cli)
COMMON=(--split models/photo-split.json --also-vfm effnet-lite1 --crop "$CROP" --lr 1e-4 --lr-schedule cosine
        --steps "$STEPS" --validate-every "$EVERY" --validation-factor "${VFACTORS[@]}" --checkpoint-every 25 --bf16
        --device "$DEV" --max-minutes "$MINUTES")
train() {  # name, out dir, options...
    local name=$1 dir=$2; shift 2
    # the run stops itself after MINUTES; the timeout only guards against a hang
    OMP_NUM_THREADS=$THREADS timeout $(( $(left) - 200 > 60 ? $(left) - 200 : 60 )) "${NAF[@]}" train "$PHOTOS" -o "$dir" \
        "${COMMON[@]}" "$@" >"$WORK/train-$name.log" 2>&1
    echo "train $name: exit $? at $(( $(date +%s) - START )) s" | tee -a "$WORK/times.log"
}
train A "$RUN_A" --factor 2 4 8 16 --batch-size 2 --init effnet-lite0-lite1 &
train B "$RUN_B" --factor 2 4 8 16 --batch-size 4 --init effnet-lite0 &
train C "$RUN_C" --factor 2 16 --batch-size 4 --init effnet-lite0 &

# correctness meanwhile (GPU timings would be disturbed by the training: benches come after)
timeout 270 bash benchmarks/gpu_check.sh "${CHECK[@]}" --only cuda-tests --only 'main-*' --only 'agree-*' --only bf16-error \
    --work "$WORK/check" >"$WORK/check.log" 2>&1
echo "gpu_check (correctness): exit $? at $(( $(date +%s) - START )) s" | tee -a "$WORK/times.log"
mkdir -p "$WORK/check-out" && cp "$OUT"/summary.* "$OUT"/steps.log "$WORK/check-out/" 2>/dev/null
wait
# the runs come back even if a later step overruns the device's limit
tar -cf "$OUT/run-A.tar" "$RUN_A"
tar -cf "$OUT/run-B.tar" "$RUN_B" 2>/dev/null
tar -cf "$OUT/run-C.tar" "$RUN_C" 2>/dev/null

weights=()  # eval names a method by its file name: one name per run
for run in A:"$RUN_A" B:"$RUN_B" C:"$RUN_C"; do
    [ -f "${run#*:}/best.safetensors" ] && cp "${run#*:}/best.safetensors" "$WORK/run-${run%%:*}.safetensors" \
        && weights+=(--checkpoint "$WORK/run-${run%%:*}.safetensors")
done
weights+=(--checkpoint effnet-lite0)
timeout 120 "${NAF[@]}" eval "$PHOTOS" --split validation --factor "${EVAL_FACTORS[@]}" \
    "${weights[@]}" --device "$DEV" --json >"$WORK/eval-upsample.json" 2>"$WORK/eval-upsample.log"
echo "eval upsample: exit $? at $(( $(date +%s) - START )) s" | tee -a "$WORK/times.log"
timeout $(( $(left) > 200 ? 200 : ($(left) > 20 ? $(left) : 20) )) "${NAF[@]}" eval "$PHOTOS" --split validation --task probe "${PROBE[@]}" \
    "${weights[@]}" --device "$DEV" --json >"$WORK/eval-probe.json" 2>"$WORK/eval-probe.log"
echo "eval probe: exit $? at $(( $(date +%s) - START )) s" | tee -a "$WORK/times.log"

if [ "$(left)" -gt 60 ]; then  # eager against torch.compile (issue 20 item 1)
    timeout $(( $(left) - 5 )) "${PYTHON:-python3}" benchmarks/compile_check.py --device "$DEV" "${COMPILE[@]}" \
        >"$WORK/compile.json" 2>"$WORK/compile.log"
    echo "compile check: exit $? at $(( $(date +%s) - START )) s" | tee -a "$WORK/times.log"
fi
if [ "$(left)" -gt 60 ] && [ "$DEV" = cuda ]; then
    timeout $(( $(left) - 10 )) bash benchmarks/gpu_check.sh --only bench-fp32-x16 --work "$WORK/check" >"$WORK/bench.log" 2>&1
    echo "bench: exit $? at $(( $(date +%s) - START )) s" | tee -a "$WORK/times.log"
    mkdir -p "$WORK/bench-out" && cp "$OUT"/summary.* "$OUT"/steps.log "$WORK/bench-out/" 2>/dev/null
fi

# at most 8 files of 16 MiB come back: one tar per run, one for everything else
rm -f "$OUT"/summary.* "$OUT"/steps.log
tar -cf "$OUT/logs.tar" -C "$WORK" --exclude='*.h5' --exclude='*.h5.*' --exclude='dry-*' .
ls -l "$OUT"; cat "$WORK/times.log"
# a step that failed or was stopped makes the whole check fail (its log is in logs.tar)
if grep -q "exit [1-9]" "$WORK/times.log"; then exit 1; fi
