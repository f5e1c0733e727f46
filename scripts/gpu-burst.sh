#!/usr/bin/env bash
# Resume a training run on an accelerator machine for a fixed budget and leave the new checkpoint in OUT.
#
#   scripts/gpu-burst.sh RUN_DIR PACK OUT [MINUTES]     e.g. scripts/gpu-burst.sh runs/gen2 artifacts/train-pack.npz "$OUT" 8.5
#
# RUN_DIR holds last.pt and optimizer.pt (the run is resumed exactly from them) and launch.sh (its flags);
# PACK is from scripts/pack-training-data.py. The run continues in OUT/run (RUN_DIR is not written).
# DEVICE (default cuda), BATCH_SIZE (default 32) and WORKERS (default: cores - 2) tune it; DEVICE=cpu runs the
# same command here, which is how the tests run it with a tiny budget. On CUDA the step uses bf16 autocast.
set -euo pipefail
run_dir=$1 pack=$2 out=$3 minutes=${4:-8.5}
cores=$(nproc)
mkdir -p "$out/run"
cp "$run_dir/last.pt" "$run_dir/optimizer.pt" "$out/run/"
[ -f "$run_dir/log.jsonl" ] && cp "$run_dir/log.jsonl" "$out/run/"
"$run_dir/launch.sh" --run-dir "$out/run" --data-pack "$pack" --device "${DEVICE:-cuda}" \
  --batch-size "${BATCH_SIZE:-32}" --workers "${WORKERS:-$(( cores > 3 ? cores - 2 : 1 ))}" \
  --threads 0 --max-minutes "$minutes" --checkpoint-minutes 3 "${@:5}"
